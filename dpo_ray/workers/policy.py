"""One DeepSpeed rank of the trainable policy (full fine-tune or peft LoRA) at its ZeRO stage (0-3)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from .. import file_digests, sequence_parallel
from ..atomic import write_dir
from ..data.batches import MicroBatch, StepScale
from ..data.collate import collate_pairs, make_layout, to_device
from ..logprobs import forward_pairs, install_scoring_head
from ..objective import add_metric_sums, metric_floats, micro_batch_objective
from ..tiled_mlp import tile_mlps
from . import deepspeed_setup, universal_checkpoint
from .device import device_memory, device_spec, host_peak_rss, host_rss, rank_threads, use_local_gpu
from .distributed import BroadcastGroup, init_distributed
from .models import disable_dropout, load_causal_lm, load_tokenizer, restore_rotary_buffers
from .specs import PolicySpec
from .weight_stream import send_tensors
from .weights import (
    ADAPTER,
    ENGINES,
    ROUND_START,
    START,
    WeightUnit,
    adapter_config_json,
    adapter_units,
    full_units,
    gathered_tensors,
    lora_scaling,
)


class PolicyWorker:
    def __init__(
        self, cfg: PolicySpec, rank: int, world_size: int, model_path: str, total_steps: int, accumulation: int
    ):
        self.cfg, self.rank, self.world = cfg, rank, world_size
        self.model_path, self.total_steps, self.accumulation = model_path, total_steps, accumulation
        self.spec = device_spec(cfg.gpus_per_rank, cfg.dtype)
        torch.set_num_threads(rank_threads(cfg.cpus_per_rank, cfg.torch_threads))
        torch.manual_seed(cfg.train.seed)
        self.engine = None
        self.weight_groups: dict[str, BroadcastGroup] = {}  # by target: the engines, the reference (TR-DPO)
        self.snapshot: list[torch.Tensor] | None = None  # the trainable weights held at a round's start (each_round)

    def device_memory(self) -> int:
        return device_memory(self.spec, self.world)

    def memory_growth(self) -> dict[str, int]:
        """Host RSS gained since the model began loading, now and at its peak (on CPU: the model states, DeepSpeed's
        buffers and what the allocator keeps) and, on GPU, the device bytes allocated now and at their peak: what
        dpo-ray plan's estimate is checked against."""
        before = self.rss_before_model
        grown = {"host_rss_growth": host_rss() - before, "host_peak_growth": host_peak_rss() - before}
        if self.spec.kind == "cuda":
            grown["device_allocated"] = torch.cuda.memory_allocated(self.spec.device)
            grown["device_peak"] = torch.cuda.max_memory_allocated(self.spec.device)
        return grown

    def start(self, address: str, port: int, zero_stage: int = 3) -> None:
        """Join the process group and build the DeepSpeed engine at this ZeRO stage (all ranks at once)."""
        local_rank = use_local_gpu(self.spec)
        init_distributed(self.rank, self.world, address, port, self.spec.backend, local_rank=local_rank)
        self.sequence_group = sequence_parallel.rank_group(self.rank, self.world, self.cfg.sequence_parallel_size)
        from transformers.integrations import HfDeepSpeedConfig
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        cfg = self.cfg
        self.zero_stage = zero_stage
        ds_config = deepspeed_setup.deepspeed_config(
            self.spec,
            self.world,
            cfg.train.micro_batch_size,
            self.accumulation,
            cfg.train.max_grad_norm,
            cfg.deepspeed,
            zero_stage,
        )
        hf_ds_config = HfDeepSpeedConfig(ds_config)  # while it lives, from_pretrained partitions at stage 3
        self.rss_before_model = host_rss()
        model = load_causal_lm(self.model_path, self.spec.dtype, cfg.attn_implementation, cfg.trust_remote_code)
        restore_rotary_buffers(model)
        if cfg.disable_dropout:  # before peft: model.lora.dropout applies as set
            disable_dropout(model)
        install_scoring_head(model, cfg.logits_chunk_mb << 20)  # before peft and DeepSpeed wrap it
        if cfg.mlp_tiles > 1:
            tile_mlps(model, cfg.mlp_tiles)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        if cfg.lora.enabled:
            from peft import LoraConfig, get_peft_model

            lora = cfg.lora
            targets = (
                lora.target_modules
                if lora.target_modules == "all-linear"
                else [m.strip() for m in lora.target_modules.split(",")]
            )
            model = get_peft_model(
                model,
                LoraConfig(
                    r=lora.r,
                    lora_alpha=lora.alpha,
                    lora_dropout=lora.dropout,
                    target_modules=targets,
                    use_dora=lora.use_dora,
                    use_rslora=lora.use_rslora,
                    modules_to_save=list(lora.modules_to_save) or None,
                    bias=str(lora.bias),
                    task_type="CAUSAL_LM",
                ),
            )
        # peft gathers partitioned weights where it needs them (DoRA's norms) while ZeRO-3 is known to transformers;
        # later loads (the LoRA merge on rank 0) must not start collectives
        del hf_ds_config
        unset_hf_deepspeed_config()
        trainable = [p for p in model.parameters() if p.requires_grad]
        offloaded = cfg.deepspeed.offload_optimizer != "none"
        optimizer = deepspeed_setup.make_optimizer(trainable, cfg.train, offloaded, cfg.cache_dir)
        if zero_stage == 0:
            deepspeed_setup.clip_before_step(optimizer, cfg.train.max_grad_norm)
        self.engine = deepspeed_setup.initialize(
            model, ds_config, optimizer, deepspeed_setup.scheduler_factory(cfg.train, self.total_steps)
        )
        self.tokenizer = load_tokenizer(self.model_path, cfg.trust_remote_code)
        self.pad_id = self.tokenizer.pad_token_id
        self.layout = make_layout(cfg.layout, cfg.pack_length, cfg.attn_implementation, cfg.sequence_parallel_size)

    def _batch(self, micro: MicroBatch) -> dict[str, torch.Tensor]:
        batch = collate_pairs(micro.pairs, self.pad_id, self.layout, self.spec.dtype)
        return to_device(batch, self.spec.device)

    def _references(self, micro: MicroBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if micro.reference_chosen_logps is None:
            return None, None
        as_tensor = lambda xs: torch.tensor(xs, dtype=torch.float32, device=self.spec.device)
        return as_tensor(micro.reference_chosen_logps), as_tensor(micro.reference_rejected_logps)

    def _labels(self, micro: MicroBatch) -> torch.Tensor | None:
        """KTO's desirable flag of each example (None for pairs)."""
        if micro.pairs[0].label is None:
            return None
        return torch.tensor([p.label for p in micro.pairs], dtype=torch.bool, device=self.spec.device)

    def train_step(self, micro_batches: list[MicroBatch], scale: StepScale) -> dict[str, float]:
        """One optimizer step over this rank's micro-batches; returns metric sums plus grad norm, learning rate and,
        per micro-batch, the positions of its pairs whose loss was not finite (they added no gradient). Nothing in
        the loop waits for the device or the other ranks beyond DeepSpeed's own collectives: the metrics and the
        non-finite pairs are read once, after the step."""
        self.engine.train()
        sums, nonfinite = [], []
        lr = self.engine.get_lr()[0]
        for micro in micro_batches:
            out = forward_pairs(self.engine, self._batch(micro), self.cfg.algo.ld_alpha, self.sequence_group)
            loss, metrics, bad = micro_batch_objective(
                out, *self._references(micro), self.cfg.algo, scale, micro.weight, self._labels(micro)
            )
            # The loss is already this micro-batch's share of the global mean; undo DeepSpeed's average over ranks.
            self.engine.backward(loss * self.world, scale_wrt_gas=False)
            self.engine.step()
            sums.append(metrics)
            nonfinite.append(bad if micro.weight else torch.zeros_like(bad))
        result = metric_floats(add_metric_sums(sums))
        flags = iter(torch.cat(nonfinite).tolist())  # one read for all micro-batches
        result["nonfinite"] = [[i for i in range(len(mask)) if next(flags)] for mask in nonfinite]
        grad_norm = self.engine.get_global_grad_norm()
        result["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        result["learning_rate"] = lr
        return result

    @torch.no_grad()
    def evaluate(self, micro_batches: list[MicroBatch], scale: StepScale) -> dict[str, float]:
        self.engine.eval()
        sums = []
        for micro in micro_batches:
            out = forward_pairs(self.engine, self._batch(micro), self.cfg.algo.ld_alpha, self.sequence_group)
            objective = micro_batch_objective(
                out, *self._references(micro), self.cfg.algo, scale, micro.weight, self._labels(micro)
            )
            sums.append(objective[1])
        return metric_floats(add_metric_sums(sums))

    @torch.no_grad()
    def reference_logps(self, micro_batches: list[MicroBatch], weights: str = START) -> list[list[tuple[float, float]]]:
        """Log-probs of each pair of each micro-batch (none for fillers) under weights: START, the starting reference
        (with LoRA, this model with its adapter disabled; otherwise this model as it is, which is the reference only
        before the first step); CURRENT, this model as it is; ROUND_START, the weights snapshot_weights kept."""
        self.engine.eval()
        adapter_off = weights == START and self.cfg.lora.enabled
        with self.engine.module.disable_adapter() if adapter_off else contextlib.nullcontext():
            with self._snapshot_in_place() if weights == ROUND_START else contextlib.nullcontext():
                scores = []
                for micro in micro_batches:
                    out = forward_pairs(self.engine, self._batch(micro), self.cfg.algo.ld_alpha, self.sequence_group)
                    pairs = zip(out.chosen_logps.tolist(), out.rejected_logps.tolist())
                    scores.append(list(pairs) if micro.weight else [])
        return scores

    def _held(self) -> list[torch.Tensor]:
        """What this rank holds of each trainable parameter (the frozen ones never change): its ZeRO-3 partition, or
        the whole tensor below stage 3."""
        trainable = [p for p in self.engine.module.parameters() if p.requires_grad]
        return [getattr(p, "ds_tensor", p).data for p in trainable]

    @torch.no_grad()
    def snapshot_weights(self) -> int:
        """Keep a host copy of the trainable weights this rank holds (online.reference_update=each_round: the round's
        starting policy, its reference, for the KL to it after training); returns its bytes."""
        self.snapshot = [t.to("cpu", copy=True) for t in self._held()]
        return sum(t.numel() * t.element_size() for t in self.snapshot)

    @contextlib.contextmanager
    def _snapshot_in_place(self):
        """The snapshot's weights in place of the current ones for the body, swapped back bit for bit after it (the
        host copy holds the current ones meanwhile: no second copy). At stage 3 no parameter may stay gathered across
        a swap: one gathered before would hide the snapshot, one gathered in the body would outlive it."""
        if self.snapshot is None:
            raise RuntimeError("no weights snapshot: snapshot_weights() first")
        release = self.engine.empty_partition_cache if self.zero_stage == 3 else lambda: None
        release()
        self._swap_snapshot()
        try:
            yield
        finally:
            release()
            self._swap_snapshot()

    @torch.no_grad()
    def _swap_snapshot(self) -> None:
        for tensor, saved in zip(self._held(), self.snapshot, strict=True):
            current = tensor.to("cpu", copy=True)
            tensor.copy_(saved)
            saved.copy_(current)

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """All ranks must call: rank 0 gets the weights in the model's dtype (at stage 3 its shards gathered layer
        by layer), the others None; with LoRA, the adapter's only."""
        lora = self.cfg.lora.enabled
        if self.zero_stage == 3:
            state = self.engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=lora)
            return state if self.rank == 0 else None
        if self.rank != 0:
            return None
        module = self.engine.module
        if lora:  # the trainable parameters by name (a state dict would also name the tied output layer)
            return {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}
        return module.state_dict()

    def _weight_units(self, target: str = ENGINES) -> tuple[list[WeightUnit], str | None]:
        """What a sync to target sends, and the adapter's config when that is the LoRA adapter alone (engines only:
        the reference takes full weights)."""
        model, lora = self.engine.module, self.cfg.lora
        if target == ENGINES and self.cfg.syncs_adapter:
            return adapter_units(model, self.spec.dtype), adapter_config_json(model.peft_config[ADAPTER])
        scaling = lora_scaling(lora) if lora.enabled else 0.0
        return full_units(model, scaling, checkpoint_names=target == ENGINES), None  # the reference: as in memory

    def weight_manifest(self, target: str = ENGINES) -> tuple[list[tuple], str | None]:
        """(name, dtype, shape) of each tensor a sync sends, in order, and the adapter config (None: full weights)."""
        units, adapter_config = self._weight_units(target)
        return [(s.name, s.dtype, s.shape) for u in units for s in u.specs], adapter_config

    def join_weight_group(self, address: str, port: int, world_size: int, timeout_s: float, target: str = ENGINES):
        """Rank 0 joins target's sync group as its sender (the other ranks only take part in the gathers)."""
        if self.rank == 0:
            group = BroadcastGroup(address, port, 0, world_size, self.spec.backend, timeout_s)
            self.weight_groups[target] = group

    def send_weights(self, bucket_bytes: int, target: str = ENGINES) -> int:
        """All ranks call: parameters are gathered a bucket at a time and rank 0 broadcasts them to target's group;
        returns the bytes sent."""
        deepspeed = deepspeed_setup.import_deepspeed()
        if self.rank != 0 and self.zero_stage < 3:
            return 0  # whole parameters on every rank: no gather to take part in
        units, _ = self._weight_units(target)
        tensors = gathered_tensors(units, bucket_bytes, deepspeed.zero.GatheredParameters, make=self.rank == 0)
        if self.rank != 0:
            for _ in tensors:  # take part in every gather, making nothing
                pass
            return 0
        specs = [spec for u in units for spec in u.specs]
        return send_tensors(specs, tensors, bucket_bytes, self.weight_groups[target].broadcast, self.spec.device)

    def save_pretrained(self, out_dir: str) -> None:
        """All ranks call; rank 0 writes an HF directory (or the LoRA adapter) atomically: temp dir, then rename."""
        state = self.full_state_dict()
        if self.rank != 0:
            return

        def fill(tmp: Path) -> None:
            self.engine.module.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            if self.cfg.lora.enabled and self.cfg.lora.save_merged:
                self._save_merged(tmp, tmp / "merged")

        write_dir(out_dir, fill)

    def _save_merged(self, adapter_dir: Path, merged_dir: Path) -> None:
        from peft import PeftModel

        base = load_causal_lm(self.model_path, self.spec.dtype, trust_remote_code=self.cfg.trust_remote_code)
        merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
        merged.save_pretrained(merged_dir, safe_serialization=True)
        self.tokenizer.save_pretrained(merged_dir)

    def save_checkpoint(self, checkpoint_dir: str, tag: str) -> dict[str, list]:
        """DeepSpeed checkpoint: model shards, optimizer and scheduler state (all ranks call). Returns the size and
        SHA-256 of each file this rank wrote, by its path inside the checkpoint: every rank hashes its own shards, on
        its own node, while the others hash theirs."""
        writer, written = self.engine.checkpoint_engine, []
        save = writer.save

        def recorded(state_dict, path):
            save(state_dict, path)
            written.append(Path(path))

        writer.save = recorded  # every shard DeepSpeed writes goes through its checkpoint engine's save
        try:
            self.engine.save_checkpoint(checkpoint_dir, tag=tag, save_latest=False)  # the driver keeps its own pointer
        finally:
            del writer.save
        root = Path(checkpoint_dir) / tag
        return file_digests.digests(root, [str(path.relative_to(root)) for path in written])

    def hash_files(self, directory: str, names: list[str]) -> dict[str, list]:
        """Size and SHA-256 of these files of a checkpoint (a share of its manifest, checked before it loads)."""
        return file_digests.digests(directory, names)

    def convert_to_universal(self, checkpoint_dir: str, tag: str, out_dir: str) -> None:
        """Rank 0 converts the checkpoint for another number of ranks (universal_checkpoint); the others wait."""
        if self.rank == 0:
            universal_checkpoint.convert(checkpoint_dir, tag, out_dir)

    def load_checkpoint(self, checkpoint_dir: str, tag: str, universal: bool = False) -> None:
        """Model, optimizer and scheduler state back from save_checkpoint (all ranks call); universal: from
        convert_to_universal's output, written by another number of ranks."""
        with universal_checkpoint.loading_universal(self.engine) if universal else contextlib.nullcontext():
            path, _ = self.engine.load_checkpoint(checkpoint_dir, tag=tag)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint {tag!r} in {checkpoint_dir}")
