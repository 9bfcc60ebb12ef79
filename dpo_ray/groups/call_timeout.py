"""The error a group call that made no progress ends in, in a module of its own so that the CLI can name it without
loading Ray."""


class GroupCallTimeout(TimeoutError):
    """A group call made no progress in time: a hung collective or a lost node that Ray has not noticed yet."""
