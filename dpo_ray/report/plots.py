"""The report's pictures (matplotlib, Agg: no display needed): training curves per step, online rounds, and where
each round's time went. Each function writes one PNG atomically and returns its path, or None when the run has
nothing to draw."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

from ..atomic import write_bytes
from .records import RunRecords

Panel = tuple[str, list[tuple[str, str]]]  # title, [(metric key, legend label)]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    _pyplot().close(fig)
    write_bytes(path, buffer.getvalue())
    return path


def line_style(points: int) -> dict:
    """How a series of this many points is drawn: markers alone below three points (two held-out evaluations are two
    measurements, not a trend), a line with markers up to 30, a line beyond."""
    if points < 3:
        return {"linestyle": "none", "marker": "o", "markersize": 5}
    return {"marker": "o" if points < 30 else None, "markersize": 3}


def round_ends(rounds: Sequence[dict]) -> list[int]:
    """The training step each online round ended at (the round rows' steps, summed), for marking per-step plots."""
    ends, step = [], 0
    for row in rounds:
        if row.get("steps"):
            step += row["steps"]
            ends.append(step)
    return ends


def _grid(
    panels: Sequence[Panel],
    series: dict[str, tuple[list[float], list[float]]],
    x_label: str,
    path: Path,
    columns: int = 4,
    boundaries: Sequence[float] = (),
) -> Path | None:
    drawn = [(title, [(k, label) for k, label in lines if series.get(k, ([], []))[0]]) for title, lines in panels]
    drawn = [(title, lines) for title, lines in drawn if lines]
    if not drawn:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    rows = (len(drawn) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows), squeeze=False)
    for ax, (title, lines) in zip(axes.flat, drawn):
        for key, label in lines:
            xs, ys = series[key]
            ax.plot(xs, ys, label=label, **line_style(len(xs)))
        for boundary in boundaries:
            ax.axvline(boundary, color="0.85", linewidth=0.8, zorder=0)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(x_label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(lines) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(drawn) :]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def _columns(rows: Sequence[dict], x_key: str) -> dict[str, tuple[list[float], list[float]]]:
    series: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        for key, value in row.items():
            if isinstance(value, (int, float)):
                xs, ys = series.setdefault(key, ([], []))
                xs.append(row[x_key])
                ys.append(value)
    return series


TRAINING: list[Panel] = [
    ("loss", [("loss", "train"), ("eval_loss", "held-out")]),
    ("rewards/accuracies", [("rewards/accuracies", "train"), ("eval_rewards/accuracies", "held-out")]),
    ("rewards/margins", [("rewards/margins", "train"), ("eval_rewards/margins", "held-out")]),
    ("implicit rewards", [("rewards/chosen", "chosen"), ("rewards/rejected", "rejected")]),
    ("KL to reference on chosen (nats/token)", [("kl/chosen", "train"), ("eval_kl/chosen", "held-out")]),
    ("grad norm", [("grad_norm", "")]),
    ("learning rate", [("learning_rate", "")]),
    ("tokens/s", [("tokens_per_second", "")]),
]

ROUNDS: list[Panel] = [
    ("reward of samples", [("reward/mean", "mean"), ("reward/max", "max")]),
    ("held-out reward (task)", [("eval/sampled_reward", "sampled"), ("eval/greedy_reward", "greedy")]),
    ("pairs per round", [("pairs", "new"), ("train_pairs", "trained on")]),
    (
        "judge comparisons",
        [
            ("judge/agreed", "agreed"),
            ("judge/ties", "ties"),
            ("judge/disagreed", "disagreed"),
            ("judge/unparseable", "unparseable"),
        ],
    ),
    (
        "judge shares (first shown: 0.5 = no position bias)",
        [("judge/agreement", "agreement"), ("judge/first_shown", "first shown")],
    ),
    (
        "mean response length (tokens)",
        [
            ("eval/length", "held-out sampled"),
            ("length/sampled", "sampled"),
            ("length/chosen", "chosen"),
            ("length/rejected", "rejected"),
        ],
    ),
    (
        "KL to reference (nats/response)",
        [("eval/kl", "held-out sampled"), ("eval/kl_to_round_reference", "to the round's reference")],
    ),
    (
        "held-out win rate vs the baseline (judge)",
        [("eval/win_rate", "win rate"), ("eval/length_controlled_win_rate", "length-controlled")],
    ),
    (
        "pair quality (shares)",
        [
            ("pairs/tied_prompt_share", "tied prompts"),
            ("pairs/near_identical_share", "near-identical"),
            ("pairs/chosen_longer_share", "chosen longer"),
            ("pairs/reference_disagrees", "ref. disagrees"),
        ],
    ),
]


def training_plot(records: RunRecords, path: Path) -> Path | None:
    """Per-step training and held-out values; in an online run, grey lines where each round's training ended."""
    series = _columns(records.steps + records.evals, "step")
    return _grid(TRAINING, series, "step", path, boundaries=round_ends(records.rounds))


def rounds_plot(records: RunRecords, path: Path) -> Path | None:
    return _grid(ROUNDS, _columns(records.rounds, "round"), "round", path, columns=3)


def frontier_points(rounds: Sequence[dict]) -> list[tuple[int, float, float]]:
    """(round, KL to the reference, held-out sampled reward) of each round evaluated with both, finite."""
    keys = ("eval/kl", "eval/sampled_reward")
    finite = lambda v: isinstance(v, (int, float)) and math.isfinite(v)
    return [(row["round"], *(row[k] for k in keys)) for row in rounds if all(finite(row.get(k)) for k in keys)]


def frontier_plot(records: RunRecords, path: Path) -> Path | None:
    """Held-out reward against KL to the reference, a point per evaluated round (the DPO paper's controlled-sentiment
    frontier: what the reward cost in divergence), joined in round order."""
    return frontiers_plot([("", records.rounds)], path)


def frontiers_plot(runs: Sequence[tuple[str, Sequence[dict]]], path: Path, kl_max: float | None = None) -> Path | None:
    """frontier_plot for several runs on one axis (one line each, labelled, e.g. by beta), each point marked with its
    round; kl_max: the KL monitor's limit, drawn as a dashed line. None when no run has two points."""
    drawn = [(label, frontier_points(rounds)) for label, rounds in runs]
    drawn = [(label, points) for label, points in drawn if len(points) >= 2]
    if not drawn:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 3.6) if len(drawn) == 1 else (6.0, 4.2))
    for label, points in drawn:
        _, kls, rewards = zip(*points)
        ax.plot(kls, rewards, label=label or None, **line_style(len(points)))
        for r, kl, reward in points:
            ax.annotate(str(r), (kl, reward), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if kl_max is not None:
        ax.axvline(kl_max, color="grey", linestyle="--", linewidth=1, label=f"KL monitor ({kl_max:g})")
    ax.set_xlabel("KL to reference (nats/response, held-out samples)", fontsize=8)
    ax.set_ylabel("held-out sampled reward", fontsize=8)
    ax.set_title("reward vs KL, by round", fontsize=9)
    ax.tick_params(labelsize=7)
    if any(label for label, _ in drawn) or kl_max is not None:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def phases_plot(records: RunRecords, path: Path) -> Path | None:
    """Seconds of each phase per round (the rows' time/<phase> keys, in their order), stacked."""
    rows = [row for row in records.rounds if "time/round" in row]
    if not rows:
        return None
    phases = [key[5:] for key in rows[0] if key.startswith("time/") and key != "time/round"]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    bottom = [0.0] * len(rows)
    labels = [row["round"] for row in rows]
    for phase in phases:
        heights = [row.get(f"time/{phase}", 0.0) for row in rows]
        ax.bar(labels, heights, bottom=bottom, label=phase)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_xticks(labels)
    ax.set_xlabel("round", fontsize=8)
    ax.set_ylabel("seconds", fontsize=8)
    ax.set_title("time per phase", fontsize=9)
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return _save(fig, path)


def timeline_plot(records: RunRecords, path: Path) -> Path | None:
    """The rounds' phases on one clock (a Gantt chart): the engines drawing each round's samples on one lane, the
    reference group's pass over a round's pairs on another, the driver's phases on the third (its "generate" and
    "wait": waiting for the engines), labelled by round. With online.async_rounds the engines' lane overlaps the
    driver's training; without, the two take turns. The reference's pass overlaps the training it feeds."""
    rows = [row for row in records.rounds if row.get("timeline")]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 2.6))
    colours, engines_free, lanes = {}, -math.inf, {"draw": 1, "reference pass": 2}
    for row in rows:
        for phase, start, end in row["timeline"]:
            lane = lanes.get(phase, 0)
            if lane == 1:  # a round asked for while the engines still draw the one before starts when that ends
                start, engines_free = max(start, engines_free), end
            colour = colours.setdefault(phase, f"C{len(colours) % 10}")
            ax.barh(lane, end - start, left=start, height=0.6, color=colour, edgecolor="white", linewidth=0.5)
            if lane == 1:
                ax.text((start + end) / 2, lane, str(row["round"]), ha="center", va="center", fontsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    ax.legend(handles, list(colours), fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    ax.set_yticks([0, 1, 2], ["driver", "engines", "reference"], fontsize=8)
    ax.set_xlabel("seconds since the start", fontsize=8)
    ax.set_title("round timeline (engines' bars: round drawn)", fontsize=9)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return _save(fig, path)
