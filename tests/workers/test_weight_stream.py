"""The weight stream: tensors cut into buckets and rebuilt bit for bit, over a list and over a real gloo group."""

from __future__ import annotations

import multiprocessing

import pytest
import torch

from dpo_ray.workers.distributed import BroadcastGroup, free_port
from dpo_ray.workers.weight_stream import TensorSpec, bucket_sizes, receive_tensors, send_tensors


def some_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "embed": torch.randn(37, 5, generator=g).to(torch.bfloat16),
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 4),
        "norm": torch.randn(5, generator=g),
        "wide": torch.randn(3, 41, generator=g).t(),  # not contiguous
        "ids": torch.arange(9, dtype=torch.int64),
    }


def specs_of(tensors):
    return [TensorSpec.of(name, t.dtype, t.shape) for name, t in tensors.items()]


class Recorder:
    """A broadcast over a list: the sender's buckets are recorded, then each receiver replays them."""

    def __init__(self):
        self.buckets: list[torch.Tensor] = []

    def send(self, buffer: torch.Tensor) -> None:
        self.buckets.append(buffer.clone())

    def replay(self):
        pending = iter(self.buckets)

        def receive(buffer: torch.Tensor) -> None:
            bucket = next(pending)
            assert bucket.numel() == buffer.numel()
            buffer.copy_(bucket)

        return receive


@pytest.mark.parametrize("bucket_bytes", [1, 7, 64, 1000, 1 << 20])
def test_every_tensor_comes_back_bit_identical_whatever_the_bucket_size(bucket_bytes):
    tensors, wire = some_tensors(), Recorder()
    specs = specs_of(tensors)
    total = sum(s.nbytes for s in specs)
    assert send_tensors(specs, tensors.values(), bucket_bytes, wire.send) == total
    assert [b.numel() for b in wire.buckets] == bucket_sizes(total, bucket_bytes)
    assert max(b.numel() for b in wire.buckets) <= bucket_bytes  # a tensor larger than a bucket spans several
    received = dict(receive_tensors(specs, bucket_bytes, wire.replay()))
    assert list(received) == list(tensors)
    for name, tensor in tensors.items():
        assert received[name].dtype == tensor.dtype and received[name].shape == tensor.shape
        assert torch.equal(received[name], tensor), name


def test_tensors_are_yielded_as_they_complete_not_after_the_whole_stream():
    tensors, wire = some_tensors(), Recorder()
    specs = specs_of(tensors)
    send_tensors(specs, tensors.values(), 16, wire.send)
    taken = []
    replay = wire.replay()

    def counting(buffer):
        taken.append(buffer.numel())
        replay(buffer)

    stream = receive_tensors(specs, 16, counting)
    name, _ = next(stream)
    assert name == "embed" and sum(taken) == 16 * -(-specs[0].nbytes // 16) < sum(s.nbytes for s in specs)


def test_a_tensor_that_does_not_match_its_spec_is_refused():
    with pytest.raises(ValueError, match="norm: torch.float32 \\(5,\\) does not match"):
        send_tensors([TensorSpec("norm", "float32", (6,))], [torch.zeros(5)], 8, lambda b: None)
    assert bucket_sizes(10, 4) == [4, 4, 2] and bucket_sizes(8, 4) == [4, 4] and bucket_sizes(0, 4) == []


def _member(rank: int, port: int, world: int, bucket_bytes: int, out) -> None:
    torch.set_num_threads(1)
    group = BroadcastGroup("127.0.0.1", port, rank, world, "gloo", timeout_s=60)
    tensors = some_tensors()
    specs = specs_of(tensors)
    if rank == 0:
        out.put((rank, send_tensors(specs, tensors.values(), bucket_bytes, group.broadcast)))
    else:
        got = dict(receive_tensors(specs, bucket_bytes, group.broadcast))
        out.put((rank, all(torch.equal(got[k], v) for k, v in tensors.items())))


def test_one_sender_streams_to_two_receivers_over_a_gloo_group_of_their_own():
    context = multiprocessing.get_context("spawn")
    out, port = context.Queue(), free_port()
    members = [context.Process(target=_member, args=(rank, port, 3, 13, out)) for rank in range(3)]
    for m in members:
        m.start()
    results = dict(out.get(timeout=120) for _ in members)
    for m in members:
        m.join(timeout=30)
    assert results[0] == sum(s.nbytes for s in specs_of(some_tensors()))
    assert results[1] is True and results[2] is True


def _nccl_member(rank: int, port: int, out) -> None:
    try:
        group = BroadcastGroup("127.0.0.1", port, rank, 2, "nccl", timeout_s=60)
        out.put((rank, f"built: {type(group.nccl).__name__}"))
    except RuntimeError as error:
        out.put((rank, str(error)))


def test_on_gpus_the_group_is_vllms_stateless_group_with_its_nccl_communicator_and_refuses_a_disabled_one():
    """Here, with no NCCL library, the GPU path runs up to vLLM's PyNcclCommunicator, which disables itself: that
    must stop the sync (a disabled communicator's broadcast does nothing), not leave the engines on old weights."""
    context = multiprocessing.get_context("spawn")
    out, port = context.Queue(), free_port()
    members = [context.Process(target=_nccl_member, args=(rank, port, out)) for rank in range(2)]
    for m in members:
        m.start()
    results = dict(out.get(timeout=120) for _ in members)
    for m in members:
        m.join(timeout=30)
    for rank in (0, 1):
        assert f"weight-sync group (rank {rank} of 2) cannot use NCCL here: vLLM's PyNcclCommunicator" in results[rank]
