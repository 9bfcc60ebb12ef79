"""One rank of the frozen reference: a full replica that scores its share of the pairs."""

from __future__ import annotations

import torch

from ..config import RunConfig
from ..data.batches import MicroBatch
from ..data.collate import collate_pairs, make_layout
from ..logprobs import forward_pairs, install_scoring_head
from .device import device_spec, rank_threads
from .models import load_causal_lm, load_tokenizer


class ReferenceWorker:
    def __init__(self, cfg: RunConfig, rank: int, world_size: int, model_path: str):
        self.cfg, self.rank = cfg, rank
        self.spec = device_spec(cfg.cluster.gpus_per_rank, cfg.model.dtype)
        torch.set_num_threads(rank_threads(cfg.cluster.cpus_per_rank, cfg.cluster.torch_threads))
        self.model = (
            load_causal_lm(model_path, self.spec.dtype, cfg.model.attn_implementation, cfg.model.trust_remote_code)
            .to(self.spec.device)
            .eval()
        )
        self.model.requires_grad_(False)
        install_scoring_head(self.model, cfg.model.logits_chunk_mb << 20)
        self.pad_id = load_tokenizer(model_path, cfg.model.trust_remote_code).pad_token_id
        self.layout = make_layout(cfg.data.layout, cfg.data.pack_length, cfg.model.attn_implementation)

    @torch.no_grad()
    def logps(self, micro_batches: list[MicroBatch]) -> list[list[tuple[float, float]]]:
        """Summed completion log-probs (chosen, rejected) of each pair of each micro-batch, collated as the policy
        collates it; none for zero-weight fillers."""
        scores = []
        for micro in micro_batches:
            batch = collate_pairs(micro.pairs, self.pad_id, self.layout, self.spec.dtype)
            out = forward_pairs(self.model, {k: v.to(self.spec.device) for k, v in batch.items()})
            scores.append(list(zip(out.chosen_logps.tolist(), out.rejected_logps.tolist())) if micro.weight else [])
        return scores
