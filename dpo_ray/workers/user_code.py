"""Calling the user's own functions (reward.fn, reward.judge_fn, eval.judge_fn) on the workers: each call bounded in
time, and a call that raises, returns the wrong thing or never returns named with the option and the input it got."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

SHOWN = 80  # characters of a prompt or response an error quotes


class UserCodeError(RuntimeError):
    """A user function failed on one input; the message names the option, the input and what happened."""


class Overran(Exception):
    """A bounded call gave no answer in time."""


def one_line(error: UserCodeError) -> str:
    """The error's message; raised in a Ray worker, the error the driver sees prints the remote traceback instead,
    and holds this one as its cause."""
    return str(getattr(error, "cause", error))


def quoted(text: Any) -> str:
    text = str(text)
    return repr(text if len(text) <= SHOWN else text[: SHOWN - 3] + "...")


class BoundedCaller:
    """Runs calls in one thread of its own and waits at most timeout_s (None: no bound) for each. A call that overruns
    is left to its thread (a daemon: it cannot be stopped from outside) and later calls go to a new one."""

    def __init__(self, timeout_s: float | None):
        self.timeout_s = timeout_s
        self._inbox: queue.Queue | None = None
        self._outbox: queue.Queue | None = None

    def __call__(self, fn: Callable, *args) -> Any:
        """fn(*args)'s value; its exception re-raised; Overran past timeout_s."""
        if self.timeout_s is None:
            return fn(*args)
        if self._inbox is None:
            self._inbox, self._outbox = queue.Queue(), queue.Queue()
            threading.Thread(target=_serve, args=(self._inbox, self._outbox), daemon=True).start()
        self._inbox.put((fn, args))
        try:
            ok, value = self._outbox.get(timeout=self.timeout_s)
        except queue.Empty:
            self._inbox = self._outbox = None  # the stuck thread keeps the old queues: its late answer goes nowhere
            raise Overran(f"no answer within {self.timeout_s:g}s") from None
        if not ok:
            raise value
        return value


def _serve(inbox: queue.Queue, outbox: queue.Queue) -> None:
    while True:
        fn, args = inbox.get()
        try:
            outbox.put((True, fn(*args)))
        except BaseException as error:  # handed to the caller, which raises it
            outbox.put((False, error))


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
