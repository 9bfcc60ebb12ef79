"""Pairs -> one model batch: padded rows (one sequence each) or packed rows (whole pairs side by side, no padding
between them). Either way the batch carries an explicit index of every completion token and of the position that
predicts it, so log-probs never rely on a plain shift over a row.

Sequence s (0..2B-1) is pair s's chosen response for s < B, pair s-B's rejected response otherwise."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch

from .tokenize import TokenizedPair


@dataclass(frozen=True)
class Layout:
    packing: bool = False
    pack_length: int = 256  # tokens per packed row; a longer pair gets a row of its own
    attention: str = "sdpa"  # the model's attn_implementation decides the mask form


def pack_rows(lengths: Sequence[int], capacity: int) -> List[List[int]]:
    """First-fit decreasing: units (whole pairs) longest first, each into the first row with room; a unit is never split,
    and one longer than capacity gets a row of its own."""
    rows: List[List[int]] = []
    used: List[int] = []
    for unit in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, filled in enumerate(used):
            if filled + lengths[unit] <= capacity:
                rows[r].append(unit)
                used[r] += lengths[unit]
                break
        else:
            rows.append([unit])
            used.append(lengths[unit])
    return rows


def _placements(pairs: Sequence[TokenizedPair], layout: Layout) -> List[List[Tuple[int, Tuple[int, ...], int]]]:
    """Per row, the (sequence id, token ids, completion length) it holds, in order."""
    b = len(pairs)
    chosen = [(i, p.prompt_ids + p.chosen_ids, len(p.chosen_ids)) for i, p in enumerate(pairs)]
    rejected = [(b + i, p.prompt_ids + p.rejected_ids, len(p.rejected_ids)) for i, p in enumerate(pairs)]
    if not layout.packing:
        return [[s] for s in chosen + rejected]
    lengths = [len(c[1]) + len(r[1]) for c, r in zip(chosen, rejected)]
    return [[s for unit in row for s in (chosen[unit], rejected[unit])] for row in pack_rows(lengths, layout.pack_length)]


def _packed_mask(segments: torch.Tensor, attention: str, dtype: torch.dtype) -> torch.Tensor:
    """(R, 1, W, W) block-diagonal causal mask: a token sees earlier tokens of its own sequence only."""
    width = segments.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = (segments[:, :, None] == segments[:, None, :]) & causal
    if attention == "eager":  # eager attention adds the mask: a bool mask would be silently wrong there
        return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
    return allowed[:, None]


def collate_pairs(pairs: Sequence[TokenizedPair], pad_id: int, layout: Layout = Layout(), dtype: torch.dtype = torch.float32) -> Dict[str, torch.Tensor]:
    rows = _placements(pairs, layout)
    width = max(sum(len(ids) for _, ids, _ in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segments = -1 - torch.arange(width).repeat(len(rows), 1)  # pads: each its own (negative) segment
    targets, sequence_ids = [], []
    for r, row in enumerate(rows):
        offset = 0
        for seq, ids, completion in row:
            n = len(ids)
            input_ids[r, offset:offset + n] = torch.tensor(ids)
            positions[r, offset:offset + n] = torch.arange(n)
            segments[r, offset:offset + n] = seq
            first = offset + max(n - completion, 1)  # a token at a sequence's start has no predictor
            targets += [r * width + j for j in range(first, offset + n)]
            sequence_ids += [seq] * (offset + n - first)
            offset += n
    target_index = torch.tensor(targets, dtype=torch.long)
    batch = {"input_ids": input_ids, "target_index": target_index, "predictor_index": target_index - 1,
             "sequence_ids": torch.tensor(sequence_ids, dtype=torch.long), "num_sequences": torch.tensor(2 * len(pairs))}
    if not layout.packing:
        batch["attention_mask"] = (segments >= 0).long()
    else:
        batch["position_ids"] = positions
        if not layout.attention.startswith("flash_attention"):  # flash-attention finds the boundaries from position ids
            batch["attention_mask"] = _packed_mask(segments, layout.attention, dtype)
    return batch
