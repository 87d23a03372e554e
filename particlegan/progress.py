"""Progress and reporting layer: the only place where library code writes to the terminal.

A :class:`Reporter` draws a one-line progress bar on stderr when stderr is a terminal; in a
Jupyter notebook (stderr is no terminal there, but a person is watching) it writes a plain line
at every tenth of the work instead; anywhere else (a pipe, a log file, CI) it stays quiet.
Quiet switch: ``PARTICLEGAN_QUIET=1`` (or ``CI`` set) silences it everywhere. Library functions
take a reporter argument and never print directly.

The bar fits the terminal's width (so a redraw never wraps and leaves a stale line behind) and
shows elapsed time and ETA as h:mm:ss; the ETA reads ``--:--:--`` until there is a rate.
"""
from __future__ import annotations

import os
import shutil
import sys
import time


def quiet_requested() -> bool:
    """True when the environment asks for silence (``PARTICLEGAN_QUIET`` or ``CI`` set)."""
    return bool(os.environ.get("CI") or os.environ.get("PARTICLEGAN_QUIET"))


def in_notebook() -> bool:
    """True inside a Jupyter/IPython kernel (where stderr is shown but is not a terminal)."""
    return "ipykernel" in sys.modules


def terminal_is_interactive(stream=None) -> bool:
    """True when ``stream`` (stderr) is a TTY and no quiet variable is set."""
    stream = stream or sys.stderr
    if quiet_requested():
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


def format_duration(seconds: float) -> str:
    """h:mm:ss of a duration; ``--:--:--`` when unknown (NaN, inf or negative)."""
    if not (seconds == seconds) or seconds in (float("inf"), float("-inf")) or seconds < 0:
        return "--:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def progress_line(label: str, done: int, total: int, elapsed: float, columns: int) -> str:
    """One progress line of at most ``columns - 1`` characters (the bar shrinks first, then
    the label is cut): ``label [####    ] done/total 0:00:12 eta 0:01:03``."""
    frac = min(1.0, done / total) if total else 1.0
    eta = elapsed / frac - elapsed if frac > 0 else float("nan")
    tail = f" {done}/{total} {format_duration(elapsed)} eta {format_duration(eta)}"
    room = max(1, columns - 1)
    bar_width = min(30, room - len(label) - len(tail) - 3)
    if bar_width >= 5:
        bar = "#" * int(round(frac * bar_width))
        line = f"{label} [{bar:<{bar_width}}]{tail}"
    else:  # too narrow for a bar: percentage only
        line = f"{label} {100 * frac:3.0f}%{tail}"
    return line[:room]


class Reporter:
    """Progress bar (``start``/``advance``/``finish``) and one-line messages (``info``).

    Parameters
    ----------
    enabled : draw the bar; None = on an interactive terminal, or as plain lines in a notebook
        (see the module docstring), unless quiet is requested.
    stream : where to draw (default stderr).
    min_interval : seconds between redraws of the bar.
    plain : write plain lines (each tenth of the work) instead of redrawing one line; None =
        only in a notebook.
    """

    def __init__(self, enabled: bool | None = None, stream=None, min_interval: float = 0.1,
                 plain: bool | None = None):
        self.stream = stream or sys.stderr
        notebook = in_notebook() and not quiet_requested()
        self.enabled = (terminal_is_interactive(self.stream) or notebook) if enabled is None else enabled
        self.plain = (notebook and not terminal_is_interactive(self.stream)) if plain is None else plain
        self.min_interval = min_interval
        self.total = 0
        self.done = 0
        self.label = ""
        self._t0 = 0.0
        self._last = 0.0
        self._last_tenth = -1
        self._drawn = 0  # characters of the bar now on the line (to blank on the next redraw)

    def start(self, total: int, label: str = "") -> None:
        self.total, self.done, self.label = int(total), 0, label
        self._t0 = self._last = time.perf_counter()
        self._last_tenth = -1
        self._draw(force=True)

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._draw()

    def finish(self) -> None:
        self._draw(force=True)
        if self.enabled and not self.plain:
            self.stream.write("\n")
            self.stream.flush()
        self._drawn = 0

    def info(self, message: str) -> None:
        """A one-line message (shown only when the reporter is enabled)."""
        if self.enabled:
            if self._drawn and not self.plain:  # keep the bar: message on its own line
                self.stream.write("\r" + " " * self._drawn + "\r")
                self._drawn = 0
            self.stream.write(message + "\n")
            self.stream.flush()

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.plain:
            tenth = int(10 * self.done / self.total) if self.total else 10
            if tenth == self._last_tenth:
                return
            self._last_tenth = tenth
            self.stream.write(progress_line(self.label, self.done, self.total, now - self._t0, 100) + "\n")
            self.stream.flush()
            return
        if not force and now - self._last < self.min_interval:
            return
        self._last = now
        columns = shutil.get_terminal_size((80, 24)).columns
        line = progress_line(self.label, self.done, self.total, now - self._t0, columns)
        # blank what a longer previous line left, without wrapping a narrowed terminal
        pad = max(0, min(self._drawn, columns - 1) - len(line))
        self.stream.write("\r" + line + " " * pad)
        self._drawn = len(line)
        self.stream.flush()


def null_reporter() -> Reporter:
    """A reporter that never writes anything."""
    return Reporter(enabled=False)
