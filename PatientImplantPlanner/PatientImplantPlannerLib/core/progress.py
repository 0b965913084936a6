"""Progress reporting through a plain callback, so the widget, the CLI and tests can all listen.

A callback is ``callback(fraction: float, message: str)`` with ``fraction`` in 0..1.
"""

from typing import Callable, Optional

ProgressCallback = Callable[[float, str], None]


class Progress:
    """Maps the steps of one task onto a sub-range of the caller's progress bar."""

    def __init__(self, callback: Optional[ProgressCallback] = None, start: float = 0.0, end: float = 1.0):
        self.callback = callback
        self.start = start
        self.end = end

    def report(self, fraction: float, message: str = "") -> None:
        if self.callback is not None:
            fraction = min(max(fraction, 0.0), 1.0)
            self.callback(self.start + (self.end - self.start) * fraction, message)

    def sub(self, start: float, end: float) -> "Progress":
        """A Progress covering [start, end] of this one (both fractions of this range)."""
        span = self.end - self.start
        return Progress(self.callback, self.start + span * start, self.start + span * end)
