"""The run-level failures a user can act on, in a module of their own so that the CLI can name them without loading
torch or Ray."""


class RunDirInUse(RuntimeError):
    """Another live run holds the output directory."""


class RunMismatch(RuntimeError):
    """The run directory holds another run's checkpoints."""


class CheckpointError(RuntimeError):
    """Checkpoints exist, and none can be trusted."""


class DiskFull(OSError):
    """A write failed for want of space: says where, and how much was needed."""
