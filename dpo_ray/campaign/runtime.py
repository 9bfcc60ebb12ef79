"""The frame every campaign runs in: its run directory and config, Ray started or joined (with its groups checked
to fit before any actor starts), attempts that restart after a lost actor or a hung call, and Ray shut down after."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import ray

from ..atomic import write_text
from ..planning import PlanError
from ..planning.nodes import ray_nodes
from ..planning.plan import PlanModels, make_plan, render, unrunnable, verdict
from ..run_files import ATTEMPTS, CONFIG, PLAN
from ..run_storage import is_uri
from ..schema import ClusterConfig, Resume, RunConfig
from ..sizing.resources import GroupNeed, check_fit, local_cpus
from . import interrupts, local_ray, run_log
from .run_lock import run_dir_lock

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class PlanCheck:
    """What the memory check before any actor starts needs: the command, its models and its engines' length."""

    command: str
    models: PlanModels
    max_model_len: int = 0


def run_campaign(
    cfg: RunConfig,
    needs: Sequence[GroupNeed],
    attempt: Callable[[bool, str], T],
    check: PlanCheck,
    concurrent: bool = True,
    cleanup: Callable[[], None] = lambda: None,
) -> tuple[T, list[dict]]:
    """attempt(resume) inside the run's frame: the run directory (held: one run at a time) with the composed
    config.json, Ray for these groups, the plan checked (plan.txt), restarts (resuming from the latest checkpoint)
    after a lost actor or a hung call, then cleanup() and Ray shut down if this call started it. Returns the result
    and one record per restart."""
    run_dir = Path(cfg.output_dir).expanduser()
    with run_dir_lock(run_dir), run_log.kept(run_dir):
        if cfg.resume == Resume.never:  # a start over: the old run's events go (its metrics and attempts restart too)
            shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
        write_text(run_dir / CONFIG, json.dumps(asdict(cfg), indent=2))
        started = ensure_ray(cfg.cluster, needs, concurrent)
        restarts: list[dict] = []
        try:
            check_plan(cfg, check, run_dir)
            shrink = lambda failure: fewer_policy_ranks(cfg, check, run_dir, failure)
            result = with_restarts(attempt, cfg.resume == Resume.auto, cfg.train.max_restarts, restarts, shrink)
            return result, restarts
        finally:
            cleanup()
            if started:
                ray.shutdown()
                local_ray.remove_session()


def ensure_ray(cluster: ClusterConfig, needs: Sequence[GroupNeed], concurrent: bool = True) -> bool:
    """Join cluster.address (or RAY_ADDRESS, as set inside `ray job submit`), or start a local Ray sized for the groups;
    then check the groups fit (all at once, or one at a time when not concurrent). Returns True if this call started
    or joined Ray (and so should shut it down)."""
    started = False
    if not ray.is_initialized():
        address, began = cluster.address or os.environ.get("RAY_ADDRESS", ""), time.perf_counter()
        log.info("Ray: %s ...", f"joining the cluster at {address}" if address else "starting a local instance")
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            local_ray.clean_stale_sessions()
            with local_ray.loopback_only():
                local_ray.start(
                    lambda: ray.init(
                        num_cpus=local_cpus(needs, concurrent, os.cpu_count() or 1),
                        include_dashboard=False,
                        object_store_memory=1 << 30,
                        log_to_driver=True,
                        **({} if os.environ.get("RAY_TMPDIR") else {"_temp_dir": str(local_ray.session_dir())}),
                    )
                )
        local_ray.private_token()
        interrupts.reinstall()  # Ray's SIGTERM handler aborts the driver before any cleanup
        log.info("Ray: ready in %.1fs", time.perf_counter() - began)
        started = True
    try:
        nodes = wait_for_nodes(cluster.nodes, cluster.nodes_wait_s)
        for together in [needs] if concurrent else [[n] for n in needs]:
            check_fit(together, nodes, cluster.placement, cluster.nodes)
    except ValueError:
        if started:
            ray.shutdown()
        raise
    return started


def check_plan(cfg: RunConfig, check: PlanCheck, run_dir: Path) -> None:
    """The plan of this run on the cluster's nodes, written to plan.txt; a run that does not fit stops here (before
    any actor starts) unless cluster.memory_check is off."""
    plan = make_plan(cfg, check.command, ray_nodes(), check.models, "the Ray cluster", check.max_model_len)
    write_text(run_dir / PLAN, render(plan) + "\n")
    why = unrunnable(plan)
    if why:
        raise PlanError(why)
    if plan.fits:
        log.info("plan: fits (%s)", run_dir / PLAN)
    elif cfg.cluster.memory_check:
        raise PlanError(f"{verdict(plan)}\n(the whole plan: {run_dir / PLAN}; cluster.memory_check=false runs anyway)")
    else:
        log.warning("plan: %s (cluster.memory_check=false: running anyway)", verdict(plan))


def alive_nodes() -> list[dict[str, float]]:
    """Each alive Ray node's total resources."""
    return [dict(n["Resources"]) for n in ray.nodes() if n["Alive"]]


def wait_for_nodes(expected: int, timeout_s: float) -> list[dict[str, float]]:
    """The alive nodes, once there are at least `expected` of them or timeout_s has passed (then check_fit says so)."""
    deadline = time.monotonic() + timeout_s
    nodes = alive_nodes()
    while len(nodes) < expected and time.monotonic() < deadline:
        log.info("waiting for Ray nodes: %d of %d alive", len(nodes), expected)
        time.sleep(2)
        nodes = alive_nodes()
    return nodes


def absolute_dirs(cfg: RunConfig) -> RunConfig:
    """cfg with output_dir and cache_dir made absolute here, on the driver: the ranks take them as they are, and a
    relative path (the default runs/latest) or ~ would be resolved in each rank's own working directory and home."""
    if is_uri(cfg.output_dir):  # the mirror is made, filled and sent back by api.run_directory
        raise ValueError(f"output_dir={cfg.output_dir}: object storage is for dpo_ray.train/online and the CLI")
    cfg.output_dir = str(Path(cfg.output_dir).expanduser().absolute())
    cfg.cache_dir = str(Path(cfg.cache_dir).expanduser().absolute())
    return cfg


def record_attempt(run_dir: Path, resumed_from: str | None, cause: str) -> None:
    """One row a run attempt (attempts.jsonl): when, from which checkpoint, and why it started; a run that starts
    from nothing starts the record afresh."""
    if resumed_from is None and cause == "rerun":  # resume=auto found nothing to resume: a start
        cause = "start"
    row = json.dumps({"started": time.time(), "resumed_from": resumed_from, "cause": cause}) + "\n"
    path = run_dir / ATTEMPTS
    earlier = path.read_text(encoding="utf-8") if resumed_from is not None and path.exists() else ""
    write_text(path, "".join(line + "\n" for line in earlier.splitlines() if line.strip()) + row)


def with_restarts(
    attempt_fn: Callable[[bool, str], T],
    resume: bool,
    max_restarts: int,
    restarts: list[dict],
    shrink: Callable[[BaseException], bool] = lambda failure: False,
) -> T:
    """attempt_fn(resume, cause) until it succeeds; after a lost actor or a hung call, again (resuming from the
    latest checkpoint) up to max_restarts times; after a group found no room, again if shrink(failure) made the
    run smaller. Each restart is recorded in restarts: what failed and when."""
    from ray.exceptions import RayActorError

    from ..groups.failures import GroupCallTimeout, NoCapacity

    for attempt in range(max_restarts + 1):
        began = time.perf_counter()
        cause = restarts[-1]["error"] if restarts else ("rerun" if resume else "start")
        try:
            return attempt_fn(resume or attempt > 0, cause)
        except (RayActorError, GroupCallTimeout, NoCapacity) as failure:
            if interrupts.stopping():  # actors a Ctrl-C killed are not restarted
                raise
            if isinstance(failure, NoCapacity) and (attempt == max_restarts or not shrink(failure)):
                if attempt > 0:  # what the restart was for
                    failure.add_note(f"while restarting after {cause}")
                raise
            if attempt == max_restarts:
                failure.add_note(
                    f"{attempt} restart(s) from the latest checkpoint did not get past it (train.max_restarts="
                    f"{max_restarts}); once the cluster is sound the same command resumes from there"
                )
                raise
            named = "; ".join([*getattr(failure, "__notes__", []), *_why(failure)])  # the call, the rank, and why
            restarts.append(
                {
                    "attempt": attempt + 1,
                    "error": f"{type(failure).__name__}: {named}"[:500],
                    "failed_after_s": time.perf_counter() - began,
                }
            )
            log.warning(
                "attempt %d failed (%s: %s); restarting the groups from the latest checkpoint (%d of %d restarts)",
                attempt + 1,
                type(failure).__name__,
                named,
                attempt + 1,
                max_restarts,
            )
        except Exception as failure:
            if attempt > 0:  # what the restart was for
                failure.add_note(f"while restarting after {cause}")
            raise
    raise AssertionError("unreachable")


def fewer_policy_ranks(cfg: RunConfig, check: PlanCheck, run_dir: Path, failure: BaseException) -> bool:
    """After the policy group found no room (a lost node): cfg.cluster.policy_ranks lowered to the most ranks, down
    to cluster.min_policy_ranks, that the alive nodes hold, that keep whole sequence-parallel groups and split
    train.batch_size evenly (the same batches) and whose memory plan fits (plan.txt rewritten); False, and the run
    stops, when none does or the option is off."""
    from ..sizing.resources import policy_need

    c, t = cfg.cluster, cfg.train
    if getattr(failure, "group", "") != "policy" or not c.min_policy_ranks:
        return False
    for ranks in range(c.policy_ranks - 1, c.min_policy_ranks - 1, -1):
        if ranks % c.sequence_parallel_size or t.batch_size % (ranks // c.sequence_parallel_size * t.micro_batch_size):
            continue
        trial = copy.deepcopy(cfg)
        trial.cluster.policy_ranks = ranks
        try:
            check_fit([policy_need(trial)], alive_nodes(), str(c.placement))
        except ValueError:
            continue
        plan = make_plan(trial, check.command, ray_nodes(), check.models, "the Ray cluster", check.max_model_len)
        if not plan.fits and c.memory_check:
            continue
        log.warning(
            "policy group: %d ranks no longer fit the cluster; going on with %d from the latest checkpoint "
            "(cluster.min_policy_ranks=%d)",
            c.policy_ranks,
            ranks,
            c.min_policy_ranks,
        )
        write_text(run_dir / PLAN, render(plan) + "\n")
        c.policy_ranks = ranks
        return True
    return False


def _why(failure: BaseException) -> list[str]:
    """The lines of a Ray failure that say what happened, where: its first, the node's address, and Ray's cause."""
    lines = [line.strip() for line in str(failure).strip().splitlines() if line.strip()] or [""]
    return list(dict.fromkeys([lines[0], *[line for line in lines if line.startswith("ip:")], lines[-1]]))
