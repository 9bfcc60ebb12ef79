"""How the report draws its series: a few held-out points are not a trend; online rounds are marked on steps."""

from __future__ import annotations

from dpo_ray.report.plots import _grid, frontier_points, line_style, round_ends


def test_two_points_are_drawn_as_markers_and_three_or_more_as_a_line(tmp_path, monkeypatch):
    import matplotlib.axes

    drawn = []
    plot = matplotlib.axes.Axes.plot

    def record(ax, xs, ys, **style):
        drawn.append((len(xs), style))
        return plot(ax, xs, ys, **style)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", record)
    series = {"loss": ([1, 2, 3, 4], [1.0, 0.9, 0.8, 0.7]), "eval_loss": ([0, 4], [1.0, 0.75])}
    assert _grid([("loss", [("loss", "train"), ("eval_loss", "held-out")])], series, "step", tmp_path / "p.png")
    assert [(n, style.get("linestyle")) for n, style in drawn] == [(4, None), (2, "none")]
    assert line_style(2)["linestyle"] == "none" and "linestyle" not in line_style(3)


def test_round_ends_are_the_steps_each_round_trained_summed():
    rounds = [{"round": 0}, {"round": 1, "steps": 4}, {"round": 2, "steps": 0}, {"round": 3, "steps": 6}]
    assert round_ends(rounds) == [4, 10]


def test_the_frontier_has_a_point_per_round_evaluated_with_a_finite_kl_and_reward():
    rounds = [
        {"round": 0, "eval/kl": 0.0, "eval/sampled_reward": 0.5},
        {"round": 1, "eval/kl": 2.5, "eval/sampled_reward": 0.7, "reward/mean": 0.6},
        {"round": 2, "reward/mean": 0.8},  # not evaluated (online.eval_every)
        {"round": 3, "eval/kl": float("nan"), "eval/sampled_reward": 0.9},  # no held-out sample to score
        {"round": 4, "eval/kl": 6.0, "eval/sampled_reward": 1},
    ]
    assert frontier_points(rounds) == [(0, 0.0, 0.5), (1, 2.5, 0.7), (4, 6.0, 1)]


def test_the_timeline_puts_the_engines_and_the_references_spans_on_their_lanes_and_the_drivers_phases_on_theirs(
    tmp_path, monkeypatch
):
    import matplotlib.axes

    from dpo_ray.report.plots import timeline_plot
    from dpo_ray.report.records import RunRecords

    bars = []
    barh = matplotlib.axes.Axes.barh

    def record(ax, lane, width, left, **style):
        bars.append((lane, left, left + width))
        return barh(ax, lane, width, left=left, **style)

    monkeypatch.setattr(matplotlib.axes.Axes, "barh", record)
    rounds = [
        {"round": 0},
        {"round": 1, "timeline": [["generate", 0.0, 2.0], ["draw", 0.0, 2.0], ["train", 2.0, 5.0]]},
        {"round": 2, "timeline": [["generate", 5.0, 5.0], ["draw", 0.1, 4.5], ["train", 5.0, 8.0]]},  # queued
        {"round": 3, "timeline": [["train", 8.0, 9.0], ["reference pass", 8.0, 8.5]]},  # scored while it trains
    ]
    records = RunRecords(tmp_path, rounds=rounds)
    assert timeline_plot(records, tmp_path / "timeline.png").exists()
    assert [b for b in bars if b[0] == 1] == [(1, 0.0, 2.0), (1, 2.0, 4.5)]  # round 2 drawn while round 1 trains
    assert [b for b in bars if b[0] == 2] == [(2, 8.0, 8.5)]
    assert [b for b in bars if b[0] == 0] == [(0, 0.0, 2.0), (0, 2.0, 5.0), (0, 5.0, 5.0), (0, 5.0, 8.0), (0, 8.0, 9.0)]
    assert timeline_plot(RunRecords(tmp_path, rounds=[{"round": 0}]), tmp_path / "none.png") is None


def test_the_frontiers_of_several_runs_share_one_axis_with_the_kl_limit(tmp_path, monkeypatch):
    import matplotlib.axes

    from dpo_ray.report.plots import frontiers_plot

    lines, limits = [], []
    plot, axvline = matplotlib.axes.Axes.plot, matplotlib.axes.Axes.axvline
    monkeypatch.setattr(
        matplotlib.axes.Axes, "plot", lambda ax, x, y, **k: lines.append((k["label"], x, y)) or plot(ax, x, y, **k)
    )
    monkeypatch.setattr(matplotlib.axes.Axes, "axvline", lambda ax, x, **k: limits.append(x) or axvline(ax, x, **k))
    row = lambda r, kl, reward: {"round": r, "eval/kl": kl, "eval/sampled_reward": reward}
    runs = [
        ("beta 0.1", [row(0, 0.0, 0.2), row(1, 9.0, 0.6), row(2, 50.0, 0.9)]),
        ("beta 1", [row(0, 0.0, 0.2), row(1, 1.0, 0.3)]),
        ("no KL", [row(0, 0.0, 0.2)]),  # one point: no frontier
    ]
    assert frontiers_plot(runs, tmp_path / "frontier.png", kl_max=20.0).exists()
    assert lines == [("beta 0.1", (0.0, 9.0, 50.0), (0.2, 0.6, 0.9)), ("beta 1", (0.0, 1.0), (0.2, 0.3))]
    assert limits == [20.0]
    assert frontiers_plot([("x", runs[2][1])], tmp_path / "none.png") is None
