"""Calling the user's own functions (reward.fn, reward.judge_fn, eval.judge_fn) on the workers: each call bounded in
time, and a call that raises, returns the wrong thing or never returns named with the option and the input it got."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

SHOWN = 80  # characters of a prompt or response an error quotes


class UserCodeError(RuntimeError):
    """A user function failed on one input; the message names the option, the input and what happened."""


class Overran(BaseException):
    """A bounded call gave no answer in time. A BaseException, so that a function handling any Exception (a reward
    that returns 0.0 on any error) cannot swallow it."""


def one_line(error: UserCodeError) -> str:
    """The error's message; raised in a Ray worker, the error the driver sees prints the remote traceback instead,
    and holds this one as its cause."""
    return str(getattr(error, "cause", error))


def quoted(text: Any) -> str:
    text = str(text)
    return repr(text if len(text) <= SHOWN else text[: SHOWN - 3] + "...")


class BoundedCaller:
    """Calls a function in this thread, interrupted by a timer signal (SIGALRM) after timeout_s (None: no bound).
    Not in a thread of its own: verifiers that bound themselves with SIGALRM (math-verify's) work in the main thread
    only. A function that sets its own alarm replaces this bound with its own; off the main thread (a threaded actor)
    there is none, and the group call's cluster.call_timeout_s still applies."""

    def __init__(self, timeout_s: float | None):
        self.timeout_s = timeout_s

    def __call__(self, fn: Callable, *args) -> Any:
        """fn(*args)'s value; its exception re-raised; Overran past timeout_s."""
        if self.timeout_s is None or threading.current_thread() is not threading.main_thread():
            return fn(*args)

        def overran(signum, frame):
            raise Overran(f"no answer within {self.timeout_s:g}s")

        began, previous = time.monotonic(), signal.signal(signal.SIGALRM, overran)
        outer, interval = signal.setitimer(signal.ITIMER_REAL, self.timeout_s)
        try:
            return fn(*args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if outer > 0:  # a timer set before (a test runner's): it goes on with the time it had left
                signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - began), 1e-3), interval)


def call_user_function(caller: BoundedCaller, option: str, fn: Callable, args: tuple, described: str) -> Any:
    """fn(*args) through caller; an exception or an overrun becomes a UserCodeError naming option and the input
    (described)."""
    try:
        return caller(fn, *args)
    except Overran as error:
        raise UserCodeError(
            f"{option} gave {error} (reward.timeout_s) on {described}: it hangs, or needs a longer bound"
        ) from None
    except Exception as error:
        raise UserCodeError(f"{option} raised {type(error).__name__}: {error} on {described}") from error
