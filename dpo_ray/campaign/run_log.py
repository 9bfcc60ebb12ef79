"""The run's own log: while a run holds its directory the driver's log lines are appended to RUN/driver.log, and a
failure that ends the run leaves its traceback there, so the one-line message a terminal shows loses nothing."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..run_files import DRIVER_LOG
from .interrupts import interruption

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextmanager
def kept(run_dir: Path) -> Iterator[None]:
    """Log lines (INFO and up, as the terminal gets them) into run_dir/driver.log while inside; an exception that
    leaves writes its traceback there and gains a note naming the file."""
    path = run_dir / DRIVER_LOG
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    except BaseException as error:
        stop = interruption(error)
        if stop is not None:  # a signal: nothing went wrong, the terminal's line says how to resume
            handler.handle(_record(logging.WARNING, f"the run stopped: {stop.args[0]}"))
        elif isinstance(error, Exception):
            handler.handle(_record(logging.ERROR, f"the run stopped: {error}", error))  # here only: the terminal
            error.add_note(f"(the traceback: {path})")  # gets the one line
        raise
    finally:
        root.removeHandler(handler)
        handler.close()


def _record(level: int, message: str, error: BaseException | None = None) -> logging.LogRecord:
    failure = (type(error), error, error.__traceback__) if error is not None else None
    return logging.LogRecord(__name__, level, __file__, 0, "%s", (message,), failure)
