"""One rank of the reference: a full replica, or (reference.sharding=zero3) a partition of the model that the ranks
hold together as a DeepSpeed ZeRO-3 inference engine, running every micro-batch in lockstep. Frozen, except under
TR-DPO, where the policy's weights streamed in are mixed into it and it is saved with each checkpoint."""

from __future__ import annotations

import torch

from .. import sequence_parallel
from ..data.batches import MicroBatch
from ..data.collate import collate_pairs, make_layout, to_device
from ..logprobs import forward_pairs, install_scoring_head
from .device import device_memory, device_spec, rank_threads, use_local_gpu
from .models import disable_dropout, load_causal_lm, load_tokenizer, restore_rotary_buffers
from .specs import ReferenceSpec


class ReferenceWorker:
    def __init__(self, cfg: ReferenceSpec, rank: int, world_size: int, model_path: str):
        """The model loads next: load_replica() on each rank, or start() on all ranks at once for zero3."""
        self.cfg, self.rank, self.world, self.model_path = cfg, rank, world_size, model_path
        self.spec = device_spec(cfg.gpus_per_rank, cfg.dtype)
        self.local_rank = use_local_gpu(self.spec)
        torch.set_num_threads(rank_threads(cfg.cpus_per_rank, cfg.torch_threads))
        self.pad_id = load_tokenizer(model_path, cfg.trust_remote_code).pad_token_id
        self.layout = make_layout(cfg.layout, cfg.pack_length, cfg.attn_implementation, cfg.sequence_parallel_size)
        self.model: torch.nn.Module | None = None
        self.sequence_group = None  # this rank's sequence-parallel group (start)

    def device_memory(self) -> int:
        return device_memory(self.spec, self.world)

    def load_replica(self) -> None:
        self.model = self._load().to(self.spec.device)

    def _load(self) -> torch.nn.Module:
        cfg = self.cfg
        model = load_causal_lm(self.model_path, self.spec.dtype, cfg.attn_implementation, cfg.trust_remote_code).eval()
        model.requires_grad_(False)
        restore_rotary_buffers(model)
        if cfg.disable_dropout:  # inactive in eval mode; zeroed so that the reference is the policy's model exactly
            disable_dropout(model)
        install_scoring_head(model, cfg.logits_chunk_mb << 20)
        return model

    def start(self, address: str, port: int, zero3: bool = True) -> None:
        """Join the group's process group (all ranks at once) and its sequence-parallel groups; then build the
        partitioned engine (zero3) or load a replica each (replicas sharing sequences)."""
        from transformers.integrations import HfDeepSpeedConfig
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        from .deepspeed_setup import import_deepspeed, inference_config
        from .distributed import init_distributed

        deepspeed = import_deepspeed()
        init_distributed(self.rank, self.world, address, port, self.spec.backend, local_rank=self.local_rank)
        self.sequence_group = sequence_parallel.rank_group(self.rank, self.world, self.cfg.sequence_parallel_size)
        if not zero3:
            self.load_replica()
            return
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
            on_device = to_device(batch, self.spec.device)
            out = forward_pairs(self.model, on_device, self.cfg.ld_alpha, self.sequence_group)
            scores.append(list(zip(out.chosen_logps.tolist(), out.rejected_logps.tolist())) if micro.weight else [])
        return scores

    def join_weight_group(self, address: str, port: int, world_size: int, timeout_s: float) -> None:
        """Join the policy's TR-DPO sync group as receiver rank 1 + this rank."""
        from .distributed import BroadcastGroup

        self.weight_group = BroadcastGroup(address, port, 1 + self.rank, world_size, self.spec.backend, timeout_s)

    @torch.no_grad()
    def mix_weights(self, specs: list, bucket_bytes: int, alpha: float) -> int:
        """TR-DPO: each parameter becomes alpha * the policy's (streamed in, one tensor at a time) + (1 - alpha) * its
        own (TRL's mix, in the model's dtype); returns how many parameters were mixed."""
        from .weight_stream import TensorSpec, receive_tensors

        manifest = [TensorSpec(name, dtype, tuple(shape)) for name, dtype, shape in specs]
        params, mixed = self._parameters(remove_duplicate=False), set()
        stream = receive_tensors(manifest, bucket_bytes, self.weight_group.broadcast, self.spec.device)
        for name, full in stream:
            param = params.get(name)
            if param is None:
                raise KeyError(f"the policy sent {name!r}, which the reference model does not have")
            if id(param) in mixed:  # a tied tensor, sent under each of its names, mixes once
                continue
            mixed.add(id(param))
            for held, part in self._pieces(param, full):
                held.mul_(1 - alpha).add_(part.to(held.dtype), alpha=alpha)
        return len(mixed)

    def _parameters(self, remove_duplicate: bool = True) -> dict[str, torch.nn.Parameter]:
        module = getattr(self.model, "module", self.model)
        return dict(module.named_parameters(remove_duplicate=remove_duplicate))

    def _pieces(self, param: torch.nn.Parameter, full: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(what this rank holds of param, flat, and the matching part of full): a replica's whole tensor; under
        ZeRO-3 its partition (the flat tensor cut into world equal parts, the last padded) and, where the parameter
        is also present whole (gathered and kept: small ones persist), that too."""
        flat = full.reshape(-1)
        partition = getattr(param, "ds_tensor", None)
        if partition is None:
            return [(param.data.view(-1), flat)]
        size = partition.numel()
        part = flat[self.rank * size : (self.rank + 1) * size]
        pieces = [(partition.data.view(-1)[: part.numel()], part)]
        if param.data.numel() == flat.numel():
            pieces.append((param.data.view(-1), flat))
        return pieces

    def _partitioned(self) -> bool:
        return any(hasattr(p, "ds_tensor") for p in self._parameters().values())

    def save_weights(self, directory: str) -> None:
        """Write what this rank holds into a checkpoint directory: a replica's weights (rank 0's only; all are the
        same), or each rank its ZeRO-3 partitions (no rank ever holds the whole model)."""
        from safetensors.torch import save_file

        partitioned = self._partitioned()
        if partitioned or self.rank == 0:
            held = {n: getattr(p, "ds_tensor", p).data.contiguous().cpu() for n, p in self._parameters().items()}
            save_file(held, f"{directory}/reference-rank{self.rank if partitioned else 0}.safetensors")

    @torch.no_grad()
    def load_weights(self, directory: str) -> None:
        """The weights save_weights wrote, back in place (a resumed TR-DPO run continues from the mixed reference),
        also when another number of ranks or the other sharding wrote them (a node lost, a run grown): ZeRO-3 cuts
        each flat parameter into equal parts by rank, the last padded, so the parts written join into the whole and
        this rank takes its own part of it, a parameter at a time. Under ZeRO-3, a parameter present whole is
        gathered anew from the loaded partitions."""
        from pathlib import Path

        from safetensors import safe_open

        partitioned = self._partitioned()
        written = sorted(Path(directory).glob("reference-rank*.safetensors"), key=lambda p: int(p.stem[14:]))
        mine = Path(directory) / f"reference-rank{self.rank if partitioned else 0}.safetensors"
        same_shape = len(written) == (self.world if partitioned else 1) and mine in written
        files = [safe_open(str(p), "pt") for p in ([mine] if same_shape else written)]
        for name, param in self._parameters().items():
            parts = [f.get_tensor(name) for f in files]
            if same_shape:
                getattr(param, "ds_tensor", param).data.copy_(parts[0])
            else:  # the whole flat parameter from what the other shape wrote, then this rank's part of it
                whole = torch.cat([t.reshape(-1) for t in parts])[: getattr(param, "ds_numel", param.numel())]
                for held, part in self._pieces(param, whole):
                    held.copy_(part.to(held.dtype))
            if partitioned and param.data.numel() == getattr(param, "ds_numel", -1):
                import torch.distributed as dist

                parts = [torch.empty_like(param.ds_tensor.data) for _ in range(self.world)]
                dist.all_gather(parts, param.ds_tensor.data.contiguous())
                param.data.view(-1).copy_(torch.cat(parts)[: param.data.numel()])
