"""An online campaign's rounds on disk: each round's samples and pairs (datasets directories, written atomically),
the summary rows (rounds.jsonl), the round checkpoints whose presence marks a round finished, and the starting
policy's held-out answers a judge plays later rounds' against."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from ..atomic import write_dir, write_text
from ..data.tokenize import TokenizedPair, TokenizeSettings, truncate
from ..file_digests import digests
from ..groups.policy_group import PolicyGroup
from ..run_files import ROUNDS
from .checkpoints import MANIFEST, CheckpointStore, Hasher, manifest, verify
from .failures import CheckpointError
from .rounds_ahead import Drawn, drawn_from_json, drawn_json

log = logging.getLogger(__name__)
EMPTY = "EMPTY"  # marks a round directory that holds no rows
DRAWN = "drawn.json"  # a round's samples as drawn, kept until the round is finished: a rerun scores them again
EVAL_BASELINE = "eval_baseline.jsonl"
PAIR_IDS = ("prompt_ids", "chosen_ids", "rejected_ids")
EXAMPLE_IDS = ("prompt_ids", "completion_ids", "mismatched_ids")  # KTO's: a labelled completion, another's beside it


class RoundStore:
    def __init__(self, run_dir: Path, keep_checkpoints: int, settings: TokenizeSettings, every: int = 1, last: int = 0):
        self.run_dir, self.settings, self.every, self.last = run_dir, settings, every, last
        self.checkpoints = CheckpointStore(run_dir / "round_checkpoints", keep_checkpoints)

    def save_eval_baseline(self, prompts: list, answers: list[str]) -> None:
        """The starting policy's held-out answers, the baseline of every later round's win rate (a resume reads them
        back rather than drawing them anew from a policy that has moved)."""
        rows = [{"prompt": p, "response": a} for p, a in zip(prompts, answers, strict=True)]
        write_text(self.run_dir / EVAL_BASELINE, "".join(json.dumps(row) + "\n" for row in rows))

    def eval_baseline(self) -> list[str]:
        lines = (self.run_dir / EVAL_BASELINE).read_text().splitlines()
        return [json.loads(line)["response"] for line in lines]

    def round_dir(self, r: int) -> Path:
        return self.run_dir / "rounds" / f"round_{r:03d}"

    def save_drawn(self, r: int, drawn: Drawn) -> Path:
        """Round r's samples as the engines drew them, before anything scores them: a run stopped before the round is
        finished (a reward function that fails, a kill) is rerun from them without generating again."""
        path = self.round_dir(r) / DRAWN
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(drawn_json(drawn)))
        return path

    def kept_draw(self, r: int, version: int) -> dict[int, Drawn]:
        """{r: round r's kept samples} when they were drawn by policy version `version` (the weights the engines hold
        on resuming: the same samples an uninterrupted run trained on); else {}."""
        path = self.round_dir(r) / DRAWN
        if not path.exists():
            return {}
        drawn = drawn_from_json(json.loads(path.read_text()))
        return {r: drawn} if drawn.version == version else {}

    def save(self, r: int, samples: list[dict], pairs: list[dict]) -> None:
        """A round's samples (prompt, responses, rewards) and its pairs (TRL's format; KTO's examples in TRL's unpaired
        layout), each replaced in one rename."""
        write_dir(self.round_dir(r) / "samples", lambda d: save_rows(d, samples))
        write_dir(self.round_dir(r) / "pairs", lambda d: save_rows(d, pairs))

    def pairs(self, r: int) -> list[TokenizedPair]:
        """Round r's pairs (KTO's labelled examples, beside their mismatched completions) as the policy sampled them:
        its token ids, not the texts tokenised anew (which can come out differently), truncated as any training pair
        is."""
        import datasets

        source = self.round_dir(r) / "pairs"
        if (source / EMPTY).exists():
            return []
        rows = datasets.load_from_disk(str(source))
        columns = EXAMPLE_IDS if "label" in rows.column_names else PAIR_IDS
        kept = [*columns, *(["label"] if columns is EXAMPLE_IDS else [])]
        return [
            TokenizedPair(*truncate(*(row[c] for c in columns), self.settings), label=row.get("label"))
            for row in rows.select_columns(kept)
        ]

    def finish(self, r: int, policy: PolicyGroup, rows: list[dict], trainer_state: dict, also: Callable | None) -> None:
        """The summary, then, every `every` rounds and after the last, the round's checkpoint (its state names the
        round, the trainer's step, tokens and the like; also writes what else belongs in it): a crash before it
        leaves the rounds since the last checkpoint unfinished."""
        (self.round_dir(r) / DRAWN).unlink(missing_ok=True)  # a rerun resumes past this round or draws it anew
        directory = self.round_dir(r)
        write_text(directory / MANIFEST, json.dumps(manifest(directory)))  # its samples and pairs, as finished
        write_text(self.run_dir / ROUNDS, rows_text(rows))
        if r % self.every == 0 or r >= self.last:
            self.checkpoints.save(policy, f"round_{r}", {"round": r, **trainer_state, "rows": rows}, also)

    def check_finished(self, state: dict) -> None:
        """On resuming from state: each finished round's samples and pairs as they were when it finished (later
        rounds replay them), else a CheckpointError naming the file; rounds.jsonl rewritten from the checkpoint's
        rows when it differs (a line cut by a crash, an edit)."""
        for r in range(1, state["round"] + 1):
            directory = self.round_dir(r)
            if not (directory / MANIFEST).exists():
                continue  # finished by a dpo-ray that wrote no round manifests
            problem = verify(directory)
            if problem:
                raise CheckpointError(
                    f"{directory}: {problem}, since round {r} finished: put its files back, or resume=never to start "
                    "over"
                )
        path, text = self.run_dir / ROUNDS, rows_text(state["rows"])
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            log.warning("%s did not match round %d's checkpoint: rewritten from it", path, state["round"])
            write_text(path, text)

    def finished(self, hasher: Hasher | None = digests) -> dict | None:
        """The state of the last finished round (its number, step and summary rows), or None (CheckpointStore.latest
        says what hasher does)."""
        return self.checkpoints.latest(hasher)

    def load(self, policy: PolicyGroup, state: dict) -> None:
        self.checkpoints.load(policy, state)

    def directory(self, state: dict) -> Path:
        return self.checkpoints.directory(state)


def rows_text(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def save_rows(directory: Path, rows: list[dict]) -> None:
    """A datasets directory; no rows leave the directory with only a note (datasets cannot reload an empty save)."""
    import datasets

    if not rows:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / EMPTY).write_text("this round produced no rows\n")
        return
    datasets.disable_progress_bars()
    datasets.Dataset.from_list(rows).save_to_disk(str(directory))
