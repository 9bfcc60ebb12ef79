"""Pairs -> one right-padded batch: all chosen rows, then all rejected rows (one concatenated forward)."""
from __future__ import annotations

from typing import Dict, Sequence

import torch

from .tokenize import TokenizedPair


def collate_pairs(pairs: Sequence[TokenizedPair], pad_id: int) -> Dict[str, torch.Tensor]:
    sequences = [p.prompt_ids + p.chosen_ids for p in pairs] + [p.prompt_ids + p.rejected_ids for p in pairs]
    completion_lengths = [len(p.chosen_ids) for p in pairs] + [len(p.rejected_ids) for p in pairs]
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    completion_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, (seq, n) in enumerate(zip(sequences, completion_lengths)):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention_mask[i, : len(seq)] = 1
        completion_mask[i, len(seq) - n : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}
