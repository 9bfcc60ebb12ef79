"""SIGTERM and SIGINT stop a real `dpo-ray train` process cleanly: exit 143 / 130 with one line on how to resume, no
Ray process of the run left behind (checked by pid), and the same command resumes from the last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpo_ray.campaign.local_ray import processes_using

from ..conftest import short_ray_tmpdir

pytestmark = pytest.mark.slow


def start(run_dir: Path, data: Path, model: str, ray_dir: Path | None, steps: int) -> subprocess.Popen:
    overrides = [
        f"output_dir={run_dir}", f"model.path={model}", f"data.train_files=[{data}]", "progress=false",
        f"train.max_steps={steps}", "train.checkpoint_every=3", "train.batch_size=4", "train.micro_batch_size=2",
        "train.lr_scheduler=constant", "train.warmup_steps=0", "train.lr=1e-4", "cluster.policy_ranks=1",
        f"cache_dir={run_dir.parent / 'cache'}", "report_to=none",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_TMPDIR"}  # None: the run's own session directory
    if ray_dir is not None:
        env["RAY_TMPDIR"] = str(ray_dir)
    return subprocess.Popen(
        [sys.executable, "-m", "dpo_ray.cli", "train", *overrides],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal gives a command
    )


def wait_for_step(run_dir: Path, step: int, process: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()[-3000:]
        metrics = run_dir / "metrics.jsonl"
        rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
        if any(r.get("step", 0) >= step and "loss" in r for r in rows):
            return
        time.sleep(0.2)
    raise AssertionError(f"no step {step} within {timeout_s}s")


def listening_addresses(pids: list[int]) -> list[tuple[str, int, int]]:
    """(address, port, pid) of every TCP socket these processes listen on, read from /proc/net/tcp and tcp6."""
    owner = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # the process is gone
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue  # this descriptor closed meanwhile (one was the listing's own)
            if link.startswith("socket:["):
                owner[link[len("socket:[") : -1]] = pid
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in owner:  # 0A: LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)  # 32-bit words in host (little-endian) order
            packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.append((socket.inet_ntop(family, packed), int(port, 16), owner[fields[9]]))
    return found


def is_loopback(address: str) -> bool:
    return address in ("::1", "::ffff:127.0.0.1") or address.startswith("127.")


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_the_run_cleanly_and_the_same_command_resumes(tiny_model_dir, tmp_path, signum, code):
    """SIGTERM to the driver (kill PID); SIGINT to the whole process group, as a terminal's Ctrl-C is sent, mid-step:
    Ray's wait was interrupted in C code and the stop came out as a SystemError traceback, exit 1."""
    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(400)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir = tmp_path / "run"
    with short_ray_tmpdir() as ray_dir:  # removed after, also when the SIGINT case returns early
        run = start(run_dir, data, tiny_model_dir, ray_dir, steps=90)
        wait_for_step(run_dir, 4, run)
        (os.killpg if signum == signal.SIGINT else os.kill)(run.pid, signum)
        began = time.monotonic()
        _, stderr = run.communicate(timeout=120)
        assert run.returncode == code, stderr[-3000:]
        assert f"stopped by {signal.Signals(signum).name}" in stderr and "resumes from the last checkpoint" in stderr
        assert "Traceback" not in stderr
        deadline = time.monotonic() + 30
        while processes_using(ray_dir) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not processes_using(ray_dir), "Ray processes of the run outlived it"
        print(f"stopped in {time.monotonic() - began:.1f}s after {signal.Signals(signum).name}")
        # the step under way when the signal came may finish (and checkpoint) first: the newest at the stop is resumed
        last = (run_dir / "checkpoints" / "latest").read_text().strip()
        assert last in {f"step_{k}" for k in range(3, 90, 3)}
        if signum == signal.SIGINT:
            return  # resuming is the same after either signal: shown once
        resumed = start(run_dir, data, tiny_model_dir, ray_dir, steps=int(last.split("_")[1]) + 2)
        _, stderr = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, stderr[-3000:]
        attempts = [json.loads(line) for line in (run_dir / "attempts.jsonl").read_text().splitlines()]
        assert attempts[-1]["resumed_from"] == last and attempts[-1]["cause"] == "rerun"


def test_local_ray_listens_on_loopback_and_a_killed_runs_session_is_cleaned_up(tiny_model_dir, tmp_path):
    """A local run's Ray listens on loopback only. SIGKILL leaves the driver's Ray session behind (its files; its
    raylet, GCS and agents where Ray keeps them running): the next local run stops what is left and removes the files;
    a run that ends removes its own, and Ray's auth token is its owner's alone."""
    from dpo_ray.campaign.local_ray import clean_stale_sessions, session_dir

    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"}) + "\n" for i in range(400))
    )
    run_dir = tmp_path / "run"
    run = start(run_dir, data, tiny_model_dir, None, steps=90)
    wait_for_step(run_dir, 2, run)
    session = session_dir(run.pid)
    listening = listening_addresses([run.pid, *processes_using(session)])
    assert len({pid for _, _, pid in listening}) >= 3, listening  # at least the GCS, the raylet and the driver
    assert all(is_loopback(address) for address, _, _ in listening), listening
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    assert session.is_dir()  # what a killed driver leaves: its session's files, and (Ray version allowing) processes
    assert session in clean_stale_sessions()
    deadline = time.monotonic() + 10
    while processes_using(session) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not processes_using(session) and not session.exists()
    finished = start(run_dir, data, tiny_model_dir, None, steps=4)
    _, stderr = finished.communicate(timeout=300)
    assert finished.returncode == 0, stderr[-3000:]
    assert not session_dir(finished.pid).exists()
    token = Path.home() / ".ray" / "auth_token"
    assert not token.exists() or token.stat().st_mode & 0o077 == 0


def test_a_stop_wrapped_by_c_code_in_a_system_error_is_still_the_stop():
    from dpo_ray.campaign.interrupts import RunInterrupted, interruption

    stop = RunInterrupted(signal.SIGINT)
    try:
        try:
            raise stop
        except RunInterrupted as cause:  # as CPython chains it when a C function returns with the error set
            raise SystemError("<cyfunction CoreWorker.wait> returned a result with an exception set") from cause
    except SystemError as wrapped:
        assert interruption(wrapped) is stop and interruption(wrapped).exit_code == 130
    assert interruption(ValueError("a bad row")) is None


def test_a_signal_that_lands_in_code_handling_any_exception_still_stops_the_run_and_a_second_one_waits(capsys):
    """A SIGTERM inside logging's emit (which handles any Exception) once vanished there and the run finished as if
    never signalled; a second signal during the first one's cleanup must not cut that cleanup short."""
    from dpo_ray.campaign import interrupts

    saved = {s: signal.getsignal(s) for s in interrupts.EXIT_CODES}
    try:
        interrupts.install()
        with pytest.raises(interrupts.RunInterrupted) as caught:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
            except Exception:
                pass  # swallowed: what logging's emit or a checkpoint check does with a failure
        assert caught.value.exit_code == 143 and interrupts.stopping()
        os.kill(os.getpid(), signal.SIGINT)  # the cleanup goes on
        time.sleep(0.1)
        assert "SIGINT: already stopping" in capsys.readouterr().err
        interrupts.install()
        assert not interrupts.stopping()  # the next run in this process starts unstopped
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        interrupts.forget()


def test_a_sessions_processes_are_found_by_their_command_line_or_an_open_file_and_not_a_neighbours(tmp_path):
    """Ray's dashboard and runtime-env agents rename themselves (ray::DashboardAgent) and keep only their logs open
    under the session: they were missed, and outlived every killed driver."""
    session, neighbour = tmp_path / "session-1", tmp_path / "session-12"
    (session / "logs").mkdir(parents=True)
    neighbour.mkdir()
    renamed = subprocess.Popen(["sh", "-c", f"exec 3>{session}/logs/agent.out; exec sleep 30"])
    named = subprocess.Popen(["sh", "-c", "sleep 30; true", f"--temp-dir={neighbour}"])
    try:
        deadline = time.monotonic() + 10
        while renamed.pid not in processes_using(session) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert processes_using(session) == [renamed.pid]
        assert processes_using(neighbour) == [named.pid]
    finally:
        renamed.kill()
        named.kill()
