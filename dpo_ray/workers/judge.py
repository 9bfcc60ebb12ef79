"""A pairwise judge given as a Python function, run on the judge group's workers (a judge model runs in a vLLM engine
of its own instead: workers.rollout)."""

from __future__ import annotations

from collections.abc import Sequence

from .reward import import_function


class JudgeFnWorker:
    def __init__(self, fn: str, rank: int = 0, world_size: int = 1):
        self.name, self.fn = fn, import_function(fn, "reward.judge_fn")

    def judge(self, requests: Sequence[tuple[str, str, str]]) -> list[str]:
        """The judge's answer text for each (prompt, response A, response B); the verdict is parsed by the caller."""
        answers = [self.fn(prompt, a, b) for prompt, a, b in requests]
        for i, answer in enumerate(answers):
            if not isinstance(answer, str):
                raise ValueError(f"reward.judge_fn={self.name}: answer {i} is {answer!r}, not a string")
        return answers
