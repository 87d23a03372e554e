"""Progress and reporting layer: the only place where library code writes to the terminal.

A :class:`Reporter` draws a one-line progress bar on stderr when stderr is a terminal and the
environment does not say CI; otherwise it stays quiet. Library functions take a reporter
argument and never print directly.
"""
from __future__ import annotations

import os
import sys
import time


def terminal_is_interactive(stream=None) -> bool:
    """True when ``stream`` (stderr) is a TTY and no CI variable is set."""
    stream = stream or sys.stderr
    if os.environ.get("CI") or os.environ.get("PARTICLEGAN_QUIET"):
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


class Reporter:
    """Progress bar (``start``/``advance``/``finish``) and one-line messages (``info``).

    Parameters
    ----------
    enabled : draw the bar; None = only on an interactive terminal (see
        :func:`terminal_is_interactive`).
    stream : where to draw (default stderr).
    """

    def __init__(self, enabled: bool | None = None, stream=None, min_interval: float = 0.1):
        self.stream = stream or sys.stderr
        self.enabled = terminal_is_interactive(self.stream) if enabled is None else enabled
        self.min_interval = min_interval
        self.total = 0
        self.done = 0
        self.label = ""
        self._t0 = 0.0
        self._last = 0.0

    def start(self, total: int, label: str = "") -> None:
        self.total, self.done, self.label = int(total), 0, label
        self._t0 = self._last = time.perf_counter()
        self._draw(force=True)

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._draw()

    def finish(self) -> None:
        self._draw(force=True)
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()

    def info(self, message: str) -> None:
        """A one-line message (shown only when the reporter is enabled)."""
        if self.enabled:
            self.stream.write(message + "\n")
            self.stream.flush()

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last < self.min_interval:
            return
        self._last = now
        frac = self.done / self.total if self.total else 1.0
        width = 30
        bar = "#" * int(round(frac * width))
        elapsed = now - self._t0
        eta = elapsed / frac - elapsed if frac > 0 else float("nan")
        self.stream.write(f"\r{self.label} [{bar:<{width}}] {self.done}/{self.total} "
                          f"{elapsed:6.1f}s eta {eta:6.1f}s")
        self.stream.flush()


def null_reporter() -> Reporter:
    """A reporter that never writes anything."""
    return Reporter(enabled=False)
