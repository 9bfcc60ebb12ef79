"""A vLLM worker extension: loads HF-named weights in place, from safetensors bytes or a safetensors file.

vLLM mixes this class into its own worker (`worker_extension_cls`), so `self` there is a vLLM worker. On CPU the
loaded model is repacked for oneDNN, so plain `load_weights` is wrong after start-up; `reload_weights` redoes that.
"""

from __future__ import annotations


class WeightLoader:
    def load_safetensors(self, source: bytes | str) -> int:
        """Load every tensor of source into the running model; returns how many tensors were loaded."""
        if isinstance(source, (bytes, bytearray)):
            from safetensors.torch import load

            tensors = load(bytes(source))
        else:
            from safetensors.torch import load_file

            tensors = load_file(source)
        self.reload_weights(weights_iterator=iter(tensors.items()))
        return len(tensors)
