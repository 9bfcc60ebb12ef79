"""`dpo-ray submit`: run a campaign as a Ray job on an existing cluster, follow its logs, return its exit status."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import time
from pathlib import Path

USAGE = """usage: dpo-ray submit [--address URL] [--working-dir DIR] [--env KEY=VALUE ...] [--pip SPEC ...] [--no-wait]
                      {train,online} [OVERRIDE ...] | campaign FILE.yaml [OVERRIDE ...]

Submits `python -m dpo_ray.cli COMMAND OVERRIDE...` to a Ray cluster's job server (the dashboard address,
default $RAY_ADDRESS or http://127.0.0.1:8265). The driver joins that cluster and places its groups on its nodes.
Prints the job id, follows the job's logs, and exits 0 when the job SUCCEEDED (1 otherwise); --no-wait returns
after submitting. --working-dir uploads a source tree (the cluster must still have the dependencies, or name them
with --pip)."""


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dpo-ray submit", usage=USAGE, add_help=False)
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265")
    parser.add_argument("--working-dir", default=None)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--pip", action="append", default=[], metavar="SPEC")
    parser.add_argument("--no-wait", action="store_true")
    parser.add_argument("command", choices=["train", "online", "campaign"])
    parser.add_argument("overrides", nargs=argparse.REMAINDER)
    return parser.parse_args(argv)


def runtime_env(args: argparse.Namespace) -> dict:
    env: dict = {}
    if args.env:
        pairs = [item.split("=", 1) for item in args.env]
        if any(len(p) != 2 or not p[0] for p in pairs):
            raise ValueError(f"--env takes KEY=VALUE, got {args.env}")
        env["env_vars"] = dict(pairs)
    if args.working_dir:
        env["working_dir"] = args.working_dir
    if args.pip:
        env["pip"] = list(args.pip)
    return env


async def _follow(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)


def use_local_token() -> None:
    """Ray heads turn token auth on when a token exists; its job client only sends one in token mode, as `ray job`
    does."""
    if "RAY_AUTH_MODE" not in os.environ and (
        os.environ.get("RAY_AUTH_TOKEN")
        or os.environ.get("RAY_AUTH_TOKEN_PATH")
        or (Path.home() / ".ray" / "auth_token").exists()
    ):
        os.environ["RAY_AUTH_MODE"] = "token"


NO_AGENT = "No available agent to submit job"  # the job server's answer until a node's job agent has registered
AGENT_WAIT_S = 120.0


def submit_when_agent_up(
    client, entrypoint: str, env: dict | None, wait_s: float = AGENT_WAIT_S, poll_s: float = 2
) -> str:
    """client.submit_job, retried while the cluster has no job agent up yet (a head just started, or busy): Ray's job
    server refuses with NO_AGENT until one registers. Any other error, or the agent still missing after wait_s, is
    raised."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=env)
        except RuntimeError as error:
            if NO_AGENT not in str(error) or time.monotonic() + poll_s > deadline:
                raise
            print(f"the cluster's job agent is not up yet: trying again for up to {wait_s:.0f}s", flush=True)
            time.sleep(poll_s)


def submit(argv: list[str], poll_s: float = 1.0) -> int:
    use_local_token()  # before Ray reads its config
    from ray.job_submission import JobStatus, JobSubmissionClient

    from .compose import compose

    args = parse(argv)
    if args.command == "campaign":  # every stage is checked here, before the job is queued
        from .stages import read_campaign, split_arguments

        read_campaign(*split_arguments(args.overrides))
    else:
        compose(args.overrides, args.command)  # a bad option fails here, before the job is queued
    client = JobSubmissionClient(args.address)
    entrypoint = shlex.join(["python", "-m", "dpo_ray.cli", args.command, *args.overrides])
    job_id = submit_when_agent_up(client, entrypoint, runtime_env(args) or None)
    print(f"submitted job {job_id} to {args.address}: {entrypoint}", flush=True)
    if args.no_wait:
        return 0
    asyncio.run(_follow(client, job_id))
    status = client.get_job_status(job_id)
    while not status.is_terminal():  # the log stream can end a moment before the status settles
        time.sleep(poll_s)
        status = client.get_job_status(job_id)
    print(f"job {job_id}: {status.value}", flush=True)
    return 0 if status == JobStatus.SUCCEEDED else 1
