"""Named tensors as one byte stream cut into buckets of a fixed size: how weights travel from the policy to the engines.

Sender and receivers agree on a manifest (names, dtypes, shapes) beforehand; the tensors' bytes follow one another in
its order, so a tensor larger than a bucket spans several and a bucket holds many small ones. Each side holds one
bucket and the tensor in hand, never the model. `broadcast` sends a uint8 buffer from the sender to every receiver in
place (a collective over gloo or NCCL, or anything with that contract).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

Broadcast = Callable[[torch.Tensor], None]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # a torch dtype's name: "bfloat16", "float32", ...
    shape: tuple[int, ...]

    @classmethod
    def of(cls, name: str, dtype: torch.dtype, shape: Sequence[int]) -> TensorSpec:
        return cls(name, str(dtype).removeprefix("torch."), tuple(int(n) for n in shape))

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.torch_dtype).element_size()


def bucket_sizes(total_bytes: int, bucket_bytes: int) -> list[int]:
    """The sizes of the buckets a stream of total_bytes is cut into: full ones, then the rest."""
    if bucket_bytes < 1:
        raise ValueError(f"bucket size must be at least 1 byte, got {bucket_bytes}")
    full, rest = divmod(total_bytes, bucket_bytes)
    return [bucket_bytes] * full + ([rest] if rest else [])


def send_tensors(
    specs: Sequence[TensorSpec],
    tensors: Iterable[torch.Tensor],
    bucket_bytes: int,
    broadcast: Broadcast,
    device: torch.device | str = "cpu",
) -> int:
    """Broadcast the tensors (in the manifest's order, each as specs says) bucket by bucket; returns the bytes sent."""
    sizes = bucket_sizes(sum(s.nbytes for s in specs), bucket_bytes)
    buffer = torch.empty(max(sizes, default=0), dtype=torch.uint8, device=device)
    bucket, filled = 0, 0
    for spec, tensor in zip(specs, tensors, strict=True):
        if tensor.dtype != spec.torch_dtype or tuple(tensor.shape) != spec.shape:
            raise ValueError(f"{spec.name}: {tensor.dtype} {tuple(tensor.shape)} does not match the manifest's {spec}")
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
        at = 0
        while at < data.numel():
            take = min(sizes[bucket] - filled, data.numel() - at)
            buffer[filled : filled + take].copy_(data[at : at + take])
            filled, at = filled + take, at + take
            if filled == sizes[bucket]:
                broadcast(buffer[:filled])
                bucket, filled = bucket + 1, 0
    return sum(sizes)


def receive_tensors(
    specs: Sequence[TensorSpec], bucket_bytes: int, broadcast: Broadcast, device: torch.device | str = "cpu"
) -> Iterator[tuple[str, torch.Tensor]]:
    """The (name, tensor) pairs of a stream send_tensors sends, each yielded as soon as its last byte arrives."""
    sizes = bucket_sizes(sum(s.nbytes for s in specs), bucket_bytes)
    buffer = torch.empty(max(sizes, default=0), dtype=torch.uint8, device=device)
    bucket, position = -1, 0
    for spec in specs:
        out = torch.empty(spec.nbytes, dtype=torch.uint8, device=device)
        at = 0
        while at < spec.nbytes:
            if bucket < 0 or position == sizes[bucket]:
                bucket, position = bucket + 1, 0
                broadcast(buffer[: sizes[bucket]])
            take = min(sizes[bucket] - position, spec.nbytes - at)
            out[at : at + take].copy_(buffer[position : position + take])
            position, at = position + take, at + take
        yield spec.name, out.view(spec.torch_dtype).reshape(spec.shape)
