"""What an online round's samples say: per-prompt sampling seeds, rewards, lengths, empty and tied shares, and the
Monte-Carlo KL to the reference of held-out samples. Pure functions of the samples and their scores."""

from __future__ import annotations

from ..data.formats import is_empty
from ..data.tokenize import TokenizedPair
from ..workers.rollout import Sample


def sample_seed(base: int, round_index: int, prompt_index: int) -> int:
    """A per-(round, prompt) sampling seed: samples do not depend on how prompts are sharded over engines."""
    return (base * 1_000_003 + round_index * 100_003 + prompt_index) % (1 << 31)


def texts(samples: list[list[Sample]]) -> list[list[str]]:
    return [[s.text for s in outs] for outs in samples]


def mean_length(samples: list[list[Sample]]) -> float:
    """Mean response length in tokens."""
    lengths = [len(s.token_ids) for outs in samples for s in outs]
    return sum(lengths) / max(1, len(lengths))


def mean_score(scores: list[list[float]]) -> float:
    return sum(x for row in scores for x in row) / sum(len(row) for row in scores)


def sample_statistics(
    drawn: list[list[Sample]], rewards: list[list[float]], min_margin: float | None
) -> dict[str, float]:
    """A round's samples: their rewards, length, empty share, and the share of prompts that yield no pair (fewer than
    two non-empty samples, or all of them within min_margin: build_pairs pairs none of those); min_margin None: the
    samples are labelled one by one (online KTO with a threshold), so no prompt is left out for ties."""
    flat = [score for scores in rewards for score in scores]
    pairable = [[w for s, w in zip(outs, scores) if not is_empty(s.text)] for outs, scores in zip(drawn, rewards)]
    stats = {
        "reward/mean": sum(flat) / len(flat),
        "reward/max": max(flat),
        "length/sampled": mean_length(drawn),
        "samples/empty_share": 1 - sum(map(len, pairable)) / len(flat),
    }
    if min_margin is not None:
        tied = sum(len(p) < 2 or max(p) - min(p) <= min_margin for p in pairable)
        stats["pairs/tied_prompt_share"] = tied / len(pairable)
    return stats


def kl_pairs(prompt_ids: list[tuple[int, ...]], sampled: list[list[Sample]]) -> tuple[list[TokenizedPair], list[list]]:
    """Reference pairs that score held-out samples two at a time (a pair's chosen and rejected slots), and for each
    pair the samples it holds (one sample twice when a prompt has an odd count)."""
    pairs, scored = [], []
    for ids, outs in zip(prompt_ids, sampled, strict=True):
        kept = [s for s in outs if s.token_ids]
        for k in range(0, len(kept), 2):
            two = kept[k : k + 2]
            pairs.append(TokenizedPair(ids, two[0].token_ids, two[-1].token_ids))
            scored.append(two)
    return pairs, scored


def kl_estimate(scored: list[list[Sample]], chosen: list[float], rejected: list[float]) -> float:
    """Monte-Carlo KL(policy || reference) in nats per response: the mean of log pi(y) - log ref(y) over responses y
    drawn from the policy (exact at temperature 1, top-p 1), with the reference log-probs of kl_pairs' pairs."""
    gaps = [sample.logp - ref for two, c, r in zip(scored, chosen, rejected) for sample, ref in zip(two, (c, r))]
    return sum(gaps) / len(gaps) if gaps else float("nan")
