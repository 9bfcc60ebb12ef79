"""A local Ray that stays local and leaves nothing behind: every listener on 127.0.0.1, its session files under a
directory of the run's own (removed at exit), Ray's auth token readable by its owner only, and the processes and files
of an earlier local run whose driver was killed (SIGKILL leaves its raylet, GCS and agents running) cleaned up by the
next one, and a start that outran Ray's own deadline on a busy machine tried again."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)
PREFIX = "dpo-ray-session-"  # + the driver's pid: short, as Ray's socket paths must stay < 108 bytes
SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # Ray's switch: "0" makes a node's IP the loopback address
# What ray.init raises when its raylet has not registered with the GCS within the 30 s Ray allows (ray/_private/node.py)
START_TIMED_OUT = "The current node timed out during startup"


@contextmanager
def loopback_only() -> Iterator[None]:
    """Ray starts on loopback: its node IP 127.0.0.1, so the GCS, raylet and workers listen there and its metrics
    servers bind 127.0.0.1 instead of 0.0.0.0. Ray offers this only as the single-machine mode it uses on macOS and
    Windows (an explicit 127.0.0.1 node IP is turned back into the host's address); its processes read the switch from
    the environment, this one from ray_constants."""
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(SINGLE_MACHINE), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_MACHINE], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(SINGLE_MACHINE, None)
        else:
            os.environ[SINGLE_MACHINE] = saved_env


def session_dir(pid: int | None = None) -> Path:
    return Path(tempfile.gettempdir()) / f"{PREFIX}{pid or os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def processes_using(path: Path) -> list[int]:
    """Pids whose command line names path (a Ray session's raylet, GCS and workers do) or that hold a file under it
    open (its dashboard and runtime-env agents rename themselves, and write their logs there)."""
    found, path = [], str(path)
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            arguments = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace").split("\0")
            words = [word for argument in arguments for word in argument.split("=")]
            if any(_under(word, path) for word in words) or _holds_under(entry, path):
                found.append(int(entry))
        except OSError:
            continue
    return found


def _under(name: str, path: str) -> bool:
    """name is path or inside it (a session /tmp/x-12 is not inside /tmp/x-1)."""
    return name == path or name.startswith(path + "/")


def _holds_under(pid: str, path: str) -> bool:
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if _under(os.readlink(f"/proc/{pid}/fd/{fd}"), path):
                return True
        except OSError:
            continue  # closed meanwhile
    return False


def clean_stale_sessions() -> list[Path]:
    """Stop the processes of local sessions whose driver is gone, remove their files; returns the sessions cleaned."""
    cleaned = []
    for directory in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        pid = directory.name.removeprefix(PREFIX)
        if not pid.isdigit() or _alive(int(pid)):
            continue
        kill(processes_using(directory))
        shutil.rmtree(directory, ignore_errors=True)
        log.info("Ray: cleaned up the local session of a run that was killed (%s)", directory)
        cleaned.append(directory)
    return cleaned


def private_token() -> None:
    """Ray writes its auth token world-readable; make it the owner's alone."""
    token = Path.home() / ".ray" / "auth_token"
    try:
        if token.exists() and token.stat().st_uid == os.getuid() and token.stat().st_mode & 0o077:
            token.chmod(stat.S_IRUSR | stat.S_IWUSR)
    except OSError as error:
        log.warning("Ray: could not make %s private: %s", token, error)


def remove_session() -> None:
    shutil.rmtree(session_dir(), ignore_errors=True)


def start(init: Callable[[], None], attempts: int = 3) -> None:
    """init() (a local ray.init), again when Ray's fixed 30 s for its raylet to register passed first: on a busy
    machine (every core taken by other jobs) the raylet and its agents can take longer to start. What the timed-out
    start left running is stopped before the next try; any other failure, or the last try's, is raised."""
    for attempt in range(1, attempts + 1):
        try:
            return init()
        except Exception as error:
            if START_TIMED_OUT not in str(error) or attempt == attempts:
                raise
            stopped = stop_own_sessions()
            log.warning(
                "Ray: the local start timed out (Ray gives its raylet 30 s; the machine is busy): stopped the %d "
                "processes it left, starting again (%d of %d)",
                len(stopped),
                attempt + 1,
                attempts,
            )


def stop_own_sessions() -> list[int]:
    """Stop the processes of this driver's Ray sessions (Ray names a session's directory after the driver's pid: under
    the run's session directory, or RAY_TMPDIR/ray, or /tmp/ray); returns their pids."""
    roots = {session_dir(), Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray"}
    sessions = [s for root in roots for s in root.glob(f"session_*_{os.getpid()}")]
    return kill([pid for session in sessions for pid in processes_using(session.resolve())])


def kill(pids: list[int]) -> list[int]:
    """SIGKILL each of pids; returns those that were still there."""
    killed = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return killed
