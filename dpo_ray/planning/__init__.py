"""Planning a run before it starts: where every actor goes and whether its memory fits (`dpo-ray plan`)."""


class PlanError(ValueError):
    """The plan says the run does not fit; the message is the plan's verdict."""
