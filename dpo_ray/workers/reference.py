"""One rank of the frozen reference: a full replica, or (reference.sharding=zero3) a partition of the model that the
ranks hold together as a DeepSpeed ZeRO-3 inference engine, running every micro-batch in lockstep."""

from __future__ import annotations

import torch

from ..config import RunConfig
from ..data.batches import MicroBatch
from ..data.collate import collate_pairs, make_layout
from ..logprobs import forward_pairs, install_scoring_head
from .device import device_memory, device_spec, rank_threads, use_local_gpu
from .models import disable_dropout, load_causal_lm, load_tokenizer, restore_rotary_buffers


class ReferenceWorker:
    def __init__(self, cfg: RunConfig, rank: int, world_size: int, model_path: str):
        """The model loads next: load_replica() on each rank, or start() on all ranks at once for zero3."""
        self.cfg, self.rank, self.world, self.model_path = cfg, rank, world_size, model_path
        self.spec = device_spec(cfg.cluster.gpus_per_rank, cfg.model.dtype)
        self.local_rank = use_local_gpu(self.spec)
        torch.set_num_threads(rank_threads(cfg.cluster.cpus_per_rank, cfg.cluster.torch_threads))
        self.pad_id = load_tokenizer(model_path, cfg.model.trust_remote_code).pad_token_id
        self.layout = make_layout(cfg.data.layout, cfg.data.pack_length, cfg.model.attn_implementation)
        self.model: torch.nn.Module | None = None

    def device_memory(self) -> int:
        return device_memory(self.spec, self.world)

    def load_replica(self) -> None:
        self.model = self._load().to(self.spec.device)

    def _load(self) -> torch.nn.Module:
        m = self.cfg.model
        model = load_causal_lm(self.model_path, self.spec.dtype, m.attn_implementation, m.trust_remote_code).eval()
        model.requires_grad_(False)
        restore_rotary_buffers(model)
        if m.disable_dropout:  # inactive in eval mode; zeroed so that the reference is the policy's model exactly
            disable_dropout(model)
        install_scoring_head(model, m.logits_chunk_mb << 20)
        return model

    def start(self, address: str, port: int) -> None:
        """zero3: join the group's process group and build the partitioned engine (all ranks at once)."""
        import deepspeed
        from transformers.integrations import HfDeepSpeedConfig
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        from .deepspeed_setup import inference_config
        from .distributed import init_distributed

        init_distributed(self.rank, self.world, address, port, self.spec.backend, local_rank=self.local_rank)
        config = inference_config(self.spec, self.world, self.cfg.deepspeed)
        hf_ds_config = HfDeepSpeedConfig(config)  # while it lives, from_pretrained builds the model partitioned
        model = self._load()
        del hf_ds_config
        unset_hf_deepspeed_config()
        self.model, *_ = deepspeed.initialize(model=model, config=config)
        self.model.eval()

    def parameter_bytes(self) -> int:
        """Bytes of parameters this rank holds: all of them for a replica, its partition under ZeRO-3."""
        module = getattr(self.model, "module", self.model)
        held = [getattr(p, "ds_tensor", p) for p in module.parameters()]
        return sum(t.numel() * t.element_size() for t in held)

    @torch.no_grad()
    def logps(self, micro_batches: list[MicroBatch]) -> list[list[tuple[float, float]]]:
        """Summed completion log-probs (chosen, rejected) of each pair of each micro-batch, collated as the policy
        collates it; none for zero-weight fillers (which keep zero3 ranks in step)."""
        scores = []
        for micro in micro_batches:
            batch = collate_pairs(micro.pairs, self.pad_id, self.layout, self.spec.dtype)
            on_device = {k: v.to(self.spec.device) for k, v in batch.items()}
            out = forward_pairs(self.model, on_device, self.cfg.algo.ld_alpha)
            scores.append(list(zip(out.chosen_logps.tolist(), out.rejected_logps.tolist())) if micro.weight else [])
        return scores
