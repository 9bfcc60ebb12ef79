"""A vLLM worker extension: joins the weight-sync group and loads the policy's weights as they stream in.

vLLM mixes this class into each of its workers (`worker_extension_cls`; one per tensor-parallel rank), so `self` is a
vLLM worker, in the engine's own process when vLLM runs multiprocessing. Only small arguments cross vLLM's RPC (its
msgpack refuses bytes over 4 GiB); the tensors come over the group. `reload_weights` takes HF-named tensors from an
iterator and shards them for this rank; plain `load_weights` is wrong after start-up on CPU (oneDNN repacking).
"""

from __future__ import annotations

import os
from pathlib import Path


class WeightReceiver:
    def join_weight_group(self, address: str, port: int, first_rank: int, world_size: int, backend: str, timeout_s):
        """Join the sync group as rank first_rank + this worker's rank in its engine."""
        from .distributed import BroadcastGroup

        self.weight_group = BroadcastGroup(address, port, first_rank + self.rank, world_size, backend, timeout_s)
        return self.weight_group.rank

    def _stream(self, specs, bucket_bytes: int, device):
        from .weight_stream import TensorSpec, receive_tensors

        manifest = [TensorSpec(name, dtype, tuple(shape)) for name, dtype, shape in specs]
        return receive_tensors(manifest, bucket_bytes, self.weight_group.broadcast, device)

    def receive_weights(self, specs: list, bucket_bytes: int) -> int:
        """Load every tensor of the manifest into the running model as it arrives; returns how many were loaded."""
        count = 0

        def counted(stream):
            nonlocal count
            for item in stream:
                count += 1
                yield item

        self.reload_weights(weights_iterator=counted(self._stream(specs, bucket_bytes, self.device)))
        self._repack_cpu_experts()
        return count

    def _repack_cpu_experts(self) -> None:
        """vLLM's CPU MoE kernel packs expert weights into its grouped-GEMM layout at the first load only; a reload
        writes the checkpoint's layout back into them, which that kernel then misreads (log-probs off by 0.01-0.1):
        pack them again. GPU kernels read the checkpoint's layout as reloaded."""
        if self.device.type != "cpu":
            return
        from vllm._custom_ops import cpu_prepack_moe_weight
        from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUUnquantizedExperts

        for module in self.model_runner.model.modules():
            kernel = getattr(getattr(module, "quant_method", None), "moe_kernel", None)
            experts = getattr(kernel, "fused_experts", None)
            if isinstance(experts, CPUUnquantizedExperts) and not getattr(experts, "_use_zentorch", False):
                for weight in (module.w13_weight, module.w2_weight):
                    weight.data.copy_(cpu_prepack_moe_weight(weight.data, experts.isa))

    def receive_adapter(self, specs: list, bucket_bytes: int, directory: str, adapter_config: str) -> int:
        """Receive a LoRA adapter and write it as a peft directory vLLM loads (one writer per engine: its rank 0; the
        directory is renamed into place whole, so no rank reads a half-written one)."""
        from safetensors.torch import save_file

        tensors = {name: t.cpu() for name, t in self._stream(specs, bucket_bytes, self.device)}
        if self.rank == 0:
            target = Path(directory)
            partial = target.with_name(f".partial-{target.name}")
            partial.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(partial / "adapter_model.safetensors"))
            (partial / "adapter_config.json").write_text(adapter_config)
            os.replace(partial, target)
        return len(tensors)
