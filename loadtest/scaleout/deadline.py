"""The runner's total time bound: every wait takes what is left of it."""

from __future__ import annotations

import time


class DeadlineExceeded(RuntimeError):
    """The run did not finish within its deadline; everything started is being stopped."""


class Deadline:
    """An instant on the monotonic clock, `seconds` from now."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._at = time.monotonic() + seconds

    def remaining(self, what: str) -> float:
        """Seconds left; DeadlineExceeded (naming `what` was being waited for) if none."""
        left = self._at - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(f"the run's deadline ({self.seconds:g} s) passed during {what}")
        return left
