"""Test-only sweep hooks (passed as ``run_sweep(..., run_reporter=...)``; pickled to the workers)."""
from __future__ import annotations

import os
import signal

from particlegan.progress import Reporter


class _KillAfterFirstStep(Reporter):
    """SIGKILLs its own process after the first particle step of a run."""

    def __init__(self):
        super().__init__(enabled=False)

    def advance(self, n: int = 1) -> None:
        super().advance(n)
        if self.done >= 1:
            os.kill(os.getpid(), signal.SIGKILL)


class KillRuns:
    """``run_reporter`` that kills the worker of the listed runs after their first step: on the
    first attempt only, or on every attempt for the runs in ``always``."""

    def __init__(self, once=(), always=()):
        self.once, self.always = frozenset(once), frozenset(always)

    def __call__(self, run_id: str, attempt: int):
        if run_id in self.always or (run_id in self.once and attempt == 1):
            return _KillAfterFirstStep()
        return None
