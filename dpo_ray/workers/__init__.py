"""Plain-Python workers (no Ray): each one is unit-testable in one process; groups/ wraps them in Ray actors."""
