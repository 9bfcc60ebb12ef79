"""Asynchronous rounds: the engines draw the samples of rounds still to come while the policy trains. Round k may be
drawn from the weights of any round >= k - 1 - max_staleness (0: the newest, as a synchronous run does); the samples
record that policy version. Rounds drawn ahead and not yet trained on are kept in the round checkpoint, so a resumed
campaign trains on the very samples an uninterrupted one would."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..workers.rollout import Sample

SAVED = "rounds_ahead.json"  # in a round checkpoint: the rounds drawn ahead of it


@dataclass
class Drawn:
    """A round's samples (n per prompt, in prompt order), the policy version (rounds trained) whose weights drew them,
    and when the drawing was asked for and done (time.perf_counter; None for samples read back from disk)."""

    samples: list[list[Sample]]
    version: int
    launched_at: float | None = None
    finished_at: float | None = None


class RoundsAhead:
    def __init__(self, max_staleness: int, last_round: int, saved: dict[int, Drawn] | None = None):
        self.max_staleness, self.last_round = max_staleness, last_round
        self.rounds: dict[int, Drawn | tuple[int, object]] = dict(saved or {})  # round -> Drawn, or (version, pending)

    def launch(self, r: int, version: int, submit: Callable[[int], object]) -> None:
        """Round r and up to max_staleness rounds after it, those not yet asked for, drawn from the engines' weights
        (policy version `version`); submit(k) starts round k's generation and returns its pending call."""
        for k in range(r, min(r + self.max_staleness, self.last_round) + 1):
            if k not in self.rounds:
                self.rounds[k] = (version, submit(k))

    def take(self, r: int) -> Drawn:
        """Round r's samples (waiting for them if they are still being drawn); it leaves the rounds ahead."""
        return self._settled(r, self.rounds.pop(r))

    def settle(self) -> None:
        """Wait for every round still being drawn: the engines must be idle before they take new weights."""
        self.rounds = {k: self._settled(k, entry) for k, entry in self.rounds.items()}

    def _settled(self, r: int, entry) -> Drawn:
        if isinstance(entry, Drawn):
            return entry
        version, pending = entry
        samples = pending.result()
        return Drawn(samples, version, pending.launched_at, pending.finished_at or time.perf_counter())

    def save(self, directory: Path) -> None:
        """The settled rounds ahead, as JSON in directory (a round checkpoint being written); none: no file."""
        self.settle()
        if not self.rounds:
            return
        (directory / SAVED).write_text(json.dumps({str(k): drawn_json(d) for k, d in self.rounds.items()}))

    @staticmethod
    def load(directory: Path) -> dict[int, Drawn]:
        """The rounds ahead a round checkpoint holds (none for a checkpoint written without them)."""
        path = directory / SAVED
        if not path.exists():
            return {}
        return {int(k): drawn_from_json(d) for k, d in json.loads(path.read_text()).items()}


def drawn_json(drawn: Drawn) -> dict:
    """A round's samples as JSON values: the policy version that drew them, each sample's text, token ids and
    log-prob."""
    samples = [[[s.text, list(s.token_ids), s.logp] for s in outs] for outs in drawn.samples]
    return {"version": drawn.version, "samples": samples}


def drawn_from_json(value: dict) -> Drawn:
    samples = [[Sample(t, tuple(ids), logp) for t, ids, logp in outs] for outs in value["samples"]]
    return Drawn(samples, value["version"])
