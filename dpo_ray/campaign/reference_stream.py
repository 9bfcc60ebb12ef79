"""Reference log-probs still being scored: the reference group works through a pass's waves while the policy trains on
the pairs already scored. The waves go out in the order the policy's first epoch reads its micro-batches, so its first
step waits for one wave instead of the whole pass; reading a pair's log-prob waits for the wave that holds it. On a
cluster the reference's GPUs score while the policy's train, instead of each waiting for the other."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

Scores = tuple[list[float], list[float]]  # (chosen, rejected) by pair index


class ReferenceStream:
    def __init__(self, n: int, waves: list[tuple[list[int], object]], done: Callable[[Scores], None] | None = None):
        """n pairs; waves: (the pair indices a wave scores, its pending call: result() gives (chosen, rejected) by
        pair index, finished_at when it was done), in the order they were sent. done: called once with every score."""
        self.chosen, self.rejected = [0.0] * n, [0.0] * n
        self._wave_of = {i: k for k, (indices, _) in enumerate(waves) for i in indices}
        self._waves, self._settled, self._done = waves, 0, done
        self.launched_at = min((pending.launched_at for _, pending in waves), default=time.perf_counter())
        self.logps = (StreamedScores(self, self.chosen), StreamedScores(self, self.rejected))

    @property
    def finished_at(self) -> float | None:
        """When the group scored the last wave (it scores them in turn), once it has."""
        return self._waves[-1][1].finished_at if self._waves else self.launched_at

    def wait_for(self, i: int) -> None:
        """Until pair i is scored."""
        self._settle_through(self._wave_of[i])

    def finish(self) -> Scores:
        """Every score, once the group has them all."""
        self._settle_through(len(self._waves) - 1)
        return self.chosen, self.rejected

    def _settle_through(self, last: int) -> None:
        while self._settled <= last:
            indices, pending = self._waves[self._settled]
            chosen, rejected = pending.result()
            for i in indices:
                self.chosen[i], self.rejected[i] = chosen[i], rejected[i]
            self._settled += 1
            if self._settled == len(self._waves) and self._done is not None:
                self._done((self.chosen, self.rejected))


class StreamedScores(Sequence[float]):
    """One side (chosen or rejected) of a stream's log-probs, read as a list: an item waits for its wave, a slice for
    the whole pass."""

    def __init__(self, stream: ReferenceStream, values: list[float]):
        self.stream, self.values = stream, values

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i):
        if isinstance(i, slice):
            self.stream.finish()
            return self.values[i]
        self.stream.wait_for(range(len(self.values))[i])
        return self.values[i]


def streamed(logps) -> ReferenceStream | None:
    """The stream behind reference log-probs, if they are still being scored."""
    side = logps[0] if logps is not None else None
    return side.stream if isinstance(side, StreamedScores) else None
