"""Pairs -> one model batch, in one of three layouts:
- padded: one sequence (prompt + response) per row, right-padded;
- packed: whole pairs side by side in rows, each sequence attending only to itself (block-diagonal causal mask);
- prefix_shared: packed, each pair laid out once as [prompt, chosen, rejected]; rejected tokens see the prompt but
  not chosen, and their positions restart at the prompt's end, so each prompt is computed once for both responses
  (a mask for sdpa and eager; key segments for a varlen kernel: prefix_attention).
Every layout carries an explicit index of each completion token and of the position that predicts it (the first
token of a response is predicted by the last prompt token, in the shared layout too), never a plain shift over a row.

Sequence s (0..2B-1) is pair s's chosen response for s < B, pair s-B's rejected response otherwise."""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..prefix_attention import aligns_causal_to_segment_end
from ..prefix_attention import boundaries as shared_prefix_boundaries
from .tokenize import TokenizedPair

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchLayout:
    kind: str = "padded"  # data.layout: padded, packed or prefix_shared
    pack_length: int = 256  # target tokens per packed row; a pair never crosses rows
    attention: str = "sdpa"  # the model's attn_implementation decides the mask form
    sequence_shards: int = 1  # cluster.sequence_parallel_size: the width a multiple of it, the masks whole-sequence

    @property
    def packed(self) -> bool:
        return self.kind != "padded"

    @property
    def prefix_shared(self) -> bool:
        return self.kind == "prefix_shared"


def is_varlen(attention: str) -> bool:
    """Whether an attention implementation takes sequence boundaries instead of a mask: flash-attention, or any
    implementation registered with transformers' flash mask function (as a CPU stand-in for it is)."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    return ALL_MASK_ATTENTION_FUNCTIONS.get(attention) is flash_attention_mask


def make_layout(kind: str, pack_length: int, attention: str, sequence_shards: int = 1) -> BatchLayout:
    """The layout a model can run: a varlen kernel shares prefixes through key segments (prefix_attention), which
    needs its causal mask aligned to a segment's end; a kernel aligning it to the start falls back to packing."""
    kind, attention = str(kind), str(attention)
    if kind == "prefix_shared" and is_varlen(attention) and not aligns_causal_to_segment_end():
        log.warning("data.layout=prefix_shared needs flash-attention >= 2.1 (causal mask at a segment's end): packed")
        kind = "packed"
    return BatchLayout(kind, pack_length, attention, sequence_shards)


def balance_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """ceil(total / capacity) rows; units (whole pairs) longest first, each onto the least-filled row. A unit is never
    split; one longer than capacity fills a row that the others then avoid."""
    n_rows = max(1, math.ceil(sum(lengths) / capacity))
    heap = [(0, r) for r in range(n_rows)]
    rows: list[list[int]] = [[] for _ in range(n_rows)]
    for unit in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        filled, r = heapq.heappop(heap)
        rows[r].append(unit)
        heapq.heappush(heap, (filled + lengths[unit], r))
    return [row for row in rows if row]


def unit_length(pair: TokenizedPair, layout: BatchLayout) -> int:
    prompt = pair.prompt_len * (1 if layout.prefix_shared else 2)
    return prompt + pair.chosen_len + pair.rejected_len


def _mask(units: torch.Tensor, branches: torch.Tensor, attention: str, dtype: torch.dtype) -> torch.Tensor:
    """(R, 1, W, W): a token sees earlier tokens of its own unit and branch, and its unit's prompt (branch 0)."""
    width = units.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same_unit = units[:, :, None] == units[:, None, :]
    visible_branch = (branches[:, :, None] == branches[:, None, :]) | (branches[:, None, :] == 0)
    allowed = same_unit & visible_branch & causal
    if attention == "eager":  # eager attention adds the mask: a bool mask would be silently wrong there
        return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
    return allowed[:, None]


def collate_pairs(
    pairs: Sequence[TokenizedPair], pad_id: int, layout: BatchLayout = BatchLayout(), dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    b = len(pairs)
    if layout.packed:
        rows = balance_rows([unit_length(p, layout) for p in pairs], layout.pack_length)
    else:  # one sequence per row: chosen rows first, then rejected rows
        rows = [[("chosen", i)] for i in range(b)] + [[("rejected", i)] for i in range(b)]
    tokens: list[list[int]] = [[] for _ in rows]
    positions: list[list[int]] = [[] for _ in rows]
    units: list[list[int]] = [[] for _ in rows]
    branches: list[list[int]] = [[] for _ in rows]
    targets, predictors, sequence_ids = [], [], []

    def put(r: int, ids, unit: int, branch: int, first_position: int) -> int:
        start = len(tokens[r])
        tokens[r] += ids
        positions[r] += range(first_position, first_position + len(ids))
        units[r] += [unit] * len(ids)
        branches[r] += [branch] * len(ids)
        return start

    def score(r: int, start: int, n: int, seq: int, first_predictor) -> None:
        """Completion tokens start..start+n-1 of row r; the first is predicted by first_predictor (None: unscored)."""
        for k in range(n):
            predictor = first_predictor if k == 0 else start + k - 1
            if predictor is not None:
                targets.append((r, start + k))
                predictors.append((r, predictor))
                sequence_ids.append(seq)

    for r, row in enumerate(rows):
        for item in row:
            if not layout.packed:
                branch, i = item
                response = pairs[i].chosen_ids if branch == "chosen" else pairs[i].rejected_ids
                seq = i if branch == "chosen" else b + i
                start = put(r, pairs[i].prompt_ids + response, seq, 0, 0)
                p = pairs[i].prompt_len
                score(r, start + p, len(response), seq, start + p - 1 if p else None)
            elif layout.prefix_shared:
                pair, p = pairs[item], pairs[item].prompt_len
                prompt_end = put(r, pair.prompt_ids, item, 0, 0) + p - 1 if p else None
                for branch, response, seq in ((1, pair.chosen_ids, item), (2, pair.rejected_ids, b + item)):
                    score(r, put(r, response, item, branch, p), len(response), seq, prompt_end)
            else:
                pair, p = pairs[item], pairs[item].prompt_len
                for response, seq in ((pair.chosen_ids, item), (pair.rejected_ids, b + item)):
                    start = put(r, pair.prompt_ids + response, seq, 0, 0)
                    score(r, start + p, len(response), seq, start + p - 1 if p else None)

    shards = layout.sequence_shards
    width = -(-max(map(len, tokens)) // shards) * shards  # every rank of a sequence-parallel group an equal shard
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    unit_ids = -1 - torch.arange(width).repeat(len(rows), 1)  # pads: each its own (negative) unit
    branch_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for r in range(len(rows)):
        n = len(tokens[r])
        input_ids[r, :n] = torch.tensor(tokens[r], dtype=torch.long)
        position_ids[r, :n] = torch.tensor(positions[r], dtype=torch.long)
        unit_ids[r, :n] = torch.tensor(units[r], dtype=torch.long)
        branch_ids[r, :n] = torch.tensor(branches[r], dtype=torch.long)
    flat = lambda pts: torch.tensor([r * width + j for r, j in pts], dtype=torch.long)
    batch = {
        "input_ids": input_ids,
        "target_index": flat(targets),
        "predictor_index": flat(predictors),
        "sequence_ids": torch.tensor(sequence_ids, dtype=torch.long),
        "num_sequences": torch.tensor(2 * b),
    }
    if not layout.packed and shards == 1:
        batch["attention_mask"] = (unit_ids >= 0).long()
    else:  # sharded padded rows too: transformers would build a padding mask's causal mask for the shard alone
        batch["position_ids"] = position_ids
        if is_varlen(layout.attention) and layout.prefix_shared:
            batch.update(shared_prefix_boundaries(unit_ids, branch_ids))
        elif is_varlen(layout.attention):
            batch.update(varlen_boundaries(position_ids))
        else:
            batch["attention_mask"] = _mask(unit_ids, branch_ids, layout.attention, dtype)
    return batch


def varlen_boundaries(position_ids: torch.Tensor) -> dict[str, torch.Tensor | int]:
    """Sequence boundaries over the rows flattened into one stream, as flash-attention's varlen kernel takes them: every
    sequence (and every pad token) starts at position 0. transformers reads packed sequences from position ids alone
    only when the batch has one row; with more, each row would run dense-causal and sequences would attend across pairs.
    The longest sequence is a plain int: the kernel takes it on the host, and a device tensor would cost a device
    synchronisation in every attention call."""
    flat = position_ids.reshape(-1)
    starts = (flat == 0).nonzero().flatten()
    cu_seq_lens = torch.cat([starts, torch.tensor([flat.numel()])]).to(torch.int32)
    longest = int(cu_seq_lens.diff().max())
    return {
        "cu_seq_lens_q": cu_seq_lens,
        "cu_seq_lens_k": cu_seq_lens,
        "max_length_q": longest,
        "max_length_k": longest,
    }


def to_device(batch: dict[str, torch.Tensor | int], device: torch.device | str) -> dict[str, torch.Tensor | int]:
    """A collated batch on device: its tensors moved, its numbers (the varlen maxima) left on the host."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
