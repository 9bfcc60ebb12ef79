"""What a policy or a reference rank reads of the run's configuration, cut from it on the driver: a rank never holds
the sections it has no use for, so no change elsewhere in the config can reach inside one."""

from __future__ import annotations

from dataclasses import dataclass

from ..adapter_sync import syncs_adapter
from ..schema import AlgoConfig, DeepSpeedConfig, LoraConfig, RunConfig, TrainConfig


@dataclass(frozen=True)
class PolicySpec:
    """A policy rank's settings: the loss, optimisation and DeepSpeed sections whole, and the few others it reads."""

    gpus_per_rank: float
    cpus_per_rank: float
    torch_threads: int
    dtype: str
    attn_implementation: str
    trust_remote_code: bool
    disable_dropout: bool
    gradient_checkpointing: bool
    mlp_tiles: int
    logits_chunk_mb: int
    lora: LoraConfig
    layout: str
    pack_length: int
    algo: AlgoConfig
    train: TrainConfig
    deepspeed: DeepSpeedConfig
    cache_dir: str  # where DeepSpeed's CPU Adam is built
    syncs_adapter: bool  # engines take the LoRA adapter alone (see adapter_sync.py)
    sequence_parallel_size: int  # ranks sharing each sequence (dpo_ray.sequence_parallel)

    @classmethod
    def of(cls, cfg: RunConfig) -> PolicySpec:
        m, c = cfg.model, cfg.cluster
        return cls(
            gpus_per_rank=c.gpus_per_rank,
            cpus_per_rank=c.cpus_per_rank,
            torch_threads=c.torch_threads,
            dtype=m.dtype,
            attn_implementation=m.attn_implementation,
            trust_remote_code=m.trust_remote_code,
            disable_dropout=m.disable_dropout,
            gradient_checkpointing=m.gradient_checkpointing,
            mlp_tiles=m.mlp_tiles,
            logits_chunk_mb=m.logits_chunk_mb,
            lora=m.lora,
            layout=cfg.data.layout,
            pack_length=cfg.data.pack_length,
            algo=cfg.algo,
            train=cfg.train,
            deepspeed=cfg.deepspeed,
            cache_dir=cfg.cache_dir,
            syncs_adapter=syncs_adapter(cfg),
            sequence_parallel_size=c.sequence_parallel_size,
        )


@dataclass(frozen=True)
class ReferenceSpec:
    """A reference rank's settings: how it loads the model and collates pairs, and ZeRO-3's for a zero3 reference."""

    gpus_per_rank: float
    cpus_per_rank: float  # cluster.reference_rank_cpus()
    torch_threads: int
    dtype: str
    attn_implementation: str
    trust_remote_code: bool
    disable_dropout: bool
    logits_chunk_mb: int
    layout: str
    pack_length: int
    ld_alpha: float | None
    deepspeed: DeepSpeedConfig
    sequence_parallel_size: int  # ranks sharing each sequence (dpo_ray.sequence_parallel)

    @classmethod
    def of(cls, cfg: RunConfig) -> ReferenceSpec:
        m, c = cfg.model, cfg.cluster
        return cls(
            gpus_per_rank=c.gpus_per_rank,
            cpus_per_rank=c.reference_rank_cpus(),
            torch_threads=c.torch_threads,
            dtype=m.dtype,
            attn_implementation=m.attn_implementation,
            trust_remote_code=m.trust_remote_code,
            disable_dropout=m.disable_dropout,
            logits_chunk_mb=m.logits_chunk_mb,
            layout=cfg.data.layout,
            pack_length=cfg.data.pack_length,
            ld_alpha=cfg.algo.ld_alpha,
            deepspeed=cfg.deepspeed,
            sequence_parallel_size=c.sequence_parallel_size,
        )
