"""Ulysses sequence parallelism against one process scoring the whole sequence: two gloo ranks, each forwarding half of
every row's positions, give the log-probs, the loss and (their two parts added) the gradients of the whole, in every
layout, under sdpa and under flash-attention's dispatch (a CPU stand-in for its kernel); and four ranks in two."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from dpo_ray.data.batches import step_scale
from dpo_ray.data.collate import collate_pairs, make_layout
from dpo_ray.data.tokenize import TokenizedPair
from dpo_ray.logprobs import forward_pairs, install_scoring_head
from dpo_ray.objective import micro_batch_objective
from dpo_ray.schema import AlgoConfig

from .conftest import TINY_SHAPE, make_pairs
from .saved_tensors import saved_for_backward

CASES = [(kind, attention) for attention in ("sdpa", "flash") for kind in ("padded", "packed", "prefix_shared")]
# 4 ranks: two cases on a model with 4 key-value heads (as many as the ranks)
CASES_BY_SIZE = {2: CASES, 4: [("packed", "sdpa"), ("prefix_shared", "flash")]}


def tiny_model(attention: str, kv_heads: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=400, attn_implementation=attention, **{**TINY_SHAPE, "num_key_value_heads": kv_heads}
    )
    model = LlamaForCausalLM(config)
    install_scoring_head(model)
    return model


def pairs():
    # varied lengths, a pair with no prompt and one longer than a packed row
    return make_pairs(7, seed=5) + [
        TokenizedPair((), (7, 8, 9), (10, 11)),
        TokenizedPair(tuple(range(5, 45)), (50, 51), (52,)),
    ]


def score(model, attention: str, kind: str, shards: int, group=None) -> dict[str, torch.Tensor]:
    """Log-probs, loss and gradients of one micro-batch (LD-DPO's weights and an SFT term on: every sum is used)."""
    data = pairs()
    batch = collate_pairs(data, 0, make_layout(kind, 48, attention, shards))
    model.zero_grad(set_to_none=False)
    out = forward_pairs(model, batch, ld_alpha=0.5, sequence_group=group)
    reference = (out.chosen_logps.detach() + 1.0, out.rejected_logps.detach() - 0.5)
    loss, metrics, _ = micro_batch_objective(out, *reference, AlgoConfig(rpo_alpha=0.3), step_scale(data))
    loss.backward()
    return {
        "logps": torch.cat([out.chosen_logps, out.rejected_logps]).detach(),
        "loss": loss.detach(),
        "grads": torch.cat([p.grad.flatten() for p in model.parameters()]),
        "entropy": out.entropy_sum.detach(),
        "log_weights": torch.cat([out.chosen_log_weight, out.rejected_log_weight]),
    }


def rank_main(rank: int, size: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    from .flash_stand_in import register

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=size)
    flash = register()
    group = dist.new_group(list(range(size)))
    results = {}
    for kind, attention in CASES_BY_SIZE[size]:
        name = flash if attention == "flash" else attention
        results[kind, attention] = score(tiny_model(name, kv_heads=size), name, kind, size, group)
    if size == 2:
        results["saved_bytes"] = {layers: saved_bytes(layers, group) for layers in (2, 4)}
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


ACTIVATION_SHAPE = dict(hidden_size=256, intermediate_size=688, num_attention_heads=8, num_key_value_heads=2)
TOKENS = 256


def saved_bytes(layers: int, group) -> int:
    """What a Llama's forward on this rank saves for backward (by storage, weights left out) on its shard of one
    TOKENS-long sequence."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from dpo_ray.attention import install
    from dpo_ray.sequence_parallel import shard_inputs

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, num_hidden_layers=layers, attn_implementation="sdpa", **ACTIVATION_SHAPE)
    model = LlamaForCausalLM(config).train()
    install("sdpa")
    # one whole causal sequence needs no mask: sdpa runs causal over the gathered positions (with a mask, CPU's sdpa
    # keeps the attention probabilities, which GPU kernels do not)
    inputs = {"input_ids": torch.randint(0, 512, (1, TOKENS)), "position_ids": torch.arange(TOKENS)[None]}
    return saved_for_backward(model, lambda: model.model(**shard_inputs(inputs, group), use_cache=False))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sharded(tmp_path_factory, size: int) -> list[dict]:
    out = tmp_path_factory.mktemp(f"sequence-parallel-{size}")
    mp.start_processes(rank_main, args=(size, free_port(), str(out)), nprocs=size, start_method="spawn")
    return [torch.load(out / f"rank{r}.pt") for r in range(size)]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return sharded(tmp_path_factory, 2)


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory):
    return sharded(tmp_path_factory, 4)


@pytest.mark.parametrize("size, kind, attention", [(n, *case) for n, cases in CASES_BY_SIZE.items() for case in cases])
def test_sequence_shards_score_and_train_as_the_whole_sequence(request, size, kind, attention):
    from .flash_stand_in import register

    name = register() if attention == "flash" else attention
    whole = score(tiny_model(name, kv_heads=size), name, kind, 1)
    ranks = [r[kind, attention] for r in request.getfixturevalue({2: "two_ranks", 4: "four_ranks"}[size])]
    errors = {
        "logps": max((got["logps"] - whole["logps"]).abs().max().item() for got in ranks),
        "loss": max(abs(got["loss"].item() - whole["loss"].item()) for got in ranks),
        "grads": (sum(got["grads"] for got in ranks) - whole["grads"]).abs().max().item(),
    }
    print(f"SP {size} {kind} {attention}: max |error| " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    for got in ranks:  # every rank of the group ends with the whole batch's numbers
        assert torch.allclose(got["logps"], whole["logps"], atol=1e-5)
        assert got["loss"].item() == pytest.approx(whole["loss"].item(), abs=1e-6)
        assert got["entropy"].item() == pytest.approx(whole["entropy"].item(), rel=1e-5)
        assert torch.allclose(got["log_weights"], whole["log_weights"], atol=1e-5)
    # each rank's gradient is its own positions' part; DeepSpeed's reduction adds the parts
    assert torch.allclose(sum(got["grads"] for got in ranks), whole["grads"], atol=1e-5)
    assert not torch.allclose(ranks[0]["grads"], whole["grads"], atol=1e-3)  # a part, not the whole


def test_a_ranks_activations_are_the_plans_for_its_shard_of_the_positions(two_ranks):
    """What autograd saves per decoder layer on each of 2 sequence-parallel ranks, against the plan's per-token formula
    at the rank's TOKENS / 2 positions (the gathered heads' queries, keys and values replace the local ones; one
    query-sized tensor more is kept)."""
    from dpo_ray.sizing.memory_estimate import layer_activation_bytes
    from dpo_ray.sizing.model_shape import ModelShape

    shape = ModelShape(0, 0, 256, 688, 4, 8, 2, 32, 512, 1024, 0, {})
    planned = TOKENS / 2 * layer_activation_bytes(shape, 4, sequence_parallel=True)
    for rank in two_ranks:
        per_layer = (rank["saved_bytes"][4] - rank["saved_bytes"][2]) / 2
        print(f"saved per layer on a rank: {per_layer:.0f} B, planned {planned:.0f} B")
        assert per_layer == pytest.approx(planned, rel=0.1)
