"""The errors group calls end in that a user can act on, in a module of their own so that the CLI can name them
without loading Ray."""


class GroupCallTimeout(TimeoutError):
    """A group call made no progress in time: a hung collective or a lost node that Ray has not noticed yet."""


class NoCapacity(RuntimeError):
    """A group's placement did not fit the cluster in time (a lost node, a smaller allocation)."""

    def __init__(self, message: str, group: str = ""):
        super().__init__(message)
        self.group = group  # which group found no room: the policy group may go on with fewer ranks
