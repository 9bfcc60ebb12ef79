"""Cache entries built by runs that start together: one builds, the others wait and read what it built."""

from __future__ import annotations

import threading
import time

from dpo_ray.atomic import build_once


def test_runs_that_share_a_cache_and_start_together_build_an_entry_once(tmp_path):
    entry, builds, seen = tmp_path / "models" / "m", [], []
    start = threading.Barrier(4)

    def fill(out):
        builds.append(out)
        time.sleep(0.3)  # long enough for every other run to arrive while it builds
        (out / "weights").write_text("built")

    def run():
        start.wait()
        build_once(entry, fill, lambda: (entry / "weights").exists())
        seen.append((entry / "weights").read_text())

    runs = [threading.Thread(target=run) for _ in range(4)]
    for r in runs:
        r.start()
    for r in runs:
        r.join(timeout=30)
    assert len(builds) == 1 and seen == ["built"] * 4
    build_once(entry, fill, lambda: False)  # not intact (damaged): built again, in place
    assert len(builds) == 2 and (entry / "weights").read_text() == "built"
