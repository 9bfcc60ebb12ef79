"""The run-level failures a user can act on, in a module of their own so that the CLI can name them without loading
torch or Ray."""


class RunDirInUse(RuntimeError):
    """Another live run holds the output directory."""


class RunMismatch(RuntimeError):
    """The run directory holds another run's results."""


class RunFinished(RuntimeError):
    """The run directory holds this very run, finished: there is nothing to do."""

    def __init__(self, message: str, run_dir):
        super().__init__(message)
        self.run_dir = run_dir


class CheckpointError(RuntimeError):
    """Checkpoints exist, and none can be trusted."""


class DiskFull(OSError):
    """A write failed for want of space: says where, and how much was needed."""
