"""SIGINT and SIGTERM stop a run cleanly: the signal becomes an exception in the driver's main thread, so the
campaign's own cleanup runs (groups stopped, Ray shut down), and the command exits 130 or 143 saying how to resume.
Ray installs its own handlers when it starts (SIGTERM aborts the driver): ours are put back after it."""

from __future__ import annotations

import signal
import sys
import threading

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
_installed = False
_received: list[int] = []  # the signals that came, so that a failure they caused is not taken for a lost actor


class RunInterrupted(BaseException):
    """The run was asked to stop by a signal. A BaseException, as KeyboardInterrupt is: code that handles any Exception
    (logging's emit, a checkpoint's hash check) must not swallow it when the signal lands inside it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.signum]


def _raise(signum, frame) -> None:
    _received.append(signum)
    if len(_received) > 1:  # the first one's cleanup is under way: let it finish (it shuts the groups and Ray down)
        print(f"{signal.Signals(signum).name}: already stopping, shutting the groups and Ray down", file=sys.stderr)
        return
    raise RunInterrupted(signum)


def stopping() -> bool:
    """Whether a stop signal has come (a terminal's Ctrl-C reaches Ray's workers too: their deaths follow from it)."""
    return bool(_received)


def interruption(error: BaseException) -> RunInterrupted | None:
    """The RunInterrupted behind error: itself, or the one a C extension wrapped in a SystemError because the signal
    came while it ran (Ray's wait: "returned a result with an exception set")."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, RunInterrupted):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def forget() -> None:
    """No stop signal has come: a later run in this process (a notebook's, the next test's) is not stopping."""
    _received.clear()


def install() -> None:
    """Turn SIGINT and SIGTERM into RunInterrupted from now on (main thread only; elsewhere a no-op)."""
    global _installed
    if threading.current_thread() is not threading.main_thread():
        return
    forget()  # a run before this one in the same process was stopped: this one is not
    for signum in EXIT_CODES:
        signal.signal(signum, _raise)
    _installed = True


def reinstall() -> None:
    """Put the handlers back if install() put them before (after Ray, which replaces them, has started)."""
    if _installed:
        install()
