"""One rank of the frozen reference: a full replica that scores its share of the pairs."""

from __future__ import annotations

import torch

from ..config import RunConfig
from ..data.collate import collate_pairs, make_layout
from ..data.tokenize import TokenizedPair
from ..logprobs import forward_pairs
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
        self.pad_id = load_tokenizer(model_path, cfg.model.trust_remote_code).pad_token_id
        self.layout = make_layout(cfg.data.layout, cfg.data.pack_length, cfg.model.attn_implementation)

    @torch.no_grad()
    def logps(self, pairs: list[TokenizedPair]) -> list[tuple[float, float]]:
        """Summed completion log-probs (chosen, rejected) of each pair, in the order given."""
        chosen, rejected = [], []
        size = self.cfg.reference.micro_batch_size
        for start in range(0, len(pairs), size):
            batch = collate_pairs(pairs[start : start + size], self.pad_id, self.layout, self.spec.dtype)
            out = forward_pairs(self.model, {k: v.to(self.spec.device) for k, v in batch.items()})
            chosen += out.chosen_logps.tolist()
            rejected += out.rejected_logps.tolist()
        return list(zip(chosen, rejected))
