"""A pairwise judge given as a Python function, run on the judge group's workers (a judge model runs in a vLLM engine
of its own instead: workers.rollout)."""

from __future__ import annotations

from collections.abc import Sequence

from .reward import import_function
from .user_code import BoundedCaller, UserCodeError, call_user_function, quoted


class JudgeFnWorker:
    def __init__(self, fn: str, timeout_s: float | None = None, rank: int = 0, world_size: int = 1):
        """timeout_s: the longest one call of fn may take (reward.timeout_s; None: no bound)."""
        self.name, self.fn = fn, import_function(fn, "reward.judge_fn")
        self.call = BoundedCaller(timeout_s)

    def judge(self, requests: Sequence[tuple[str, str, str]]) -> list[str]:
        """The judge's answer text for each (prompt, response A, response B); the verdict is parsed by the caller. A
        call that raises, overruns or answers with no text is named with its input."""
        answers = []
        for prompt, a, b in requests:
            where = f"prompt {quoted(prompt)}, response A {quoted(a)}, response B {quoted(b)}"
            answer = call_user_function(self.call, f"judge_fn={self.name}", self.fn, (prompt, a, b), where)
            if not isinstance(answer, str):
                raise UserCodeError(f"judge_fn={self.name} answered {answer!r}, not a string, on {where}")
            answers.append(answer)
        return answers
