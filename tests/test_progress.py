"""Progress bar: fits the terminal, h:mm:ss times, no NaN, quiet switch, notebook lines."""
import io
import sys

import pytest

from particlegan import progress
from particlegan.progress import Reporter, format_duration, progress_line


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_format_duration():
    assert format_duration(0) == "0:00:00"
    assert format_duration(75.4) == "0:01:15"
    assert format_duration(3 * 3600 + 5) == "3:00:05"
    assert format_duration(float("nan")) == format_duration(float("inf")) == "--:--:--"


@pytest.mark.parametrize("columns", [20, 40, 60, 80, 200])
def test_line_fits_the_width_and_has_no_nan(columns):
    for done in (0, 1, 50, 100):
        line = progress_line("sweep", done, 100, 12.0, columns)
        assert len(line) <= columns - 1 and "nan" not in line
    assert "eta --:--:--" in progress_line("run", 0, 100, 0.0, 80)
    assert progress_line("run", 50, 100, 10.0, 80).endswith("50/100 0:00:10 eta 0:00:10")


def test_redraws_never_wrap_a_60_column_terminal(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("PARTICLEGAN_QUIET", raising=False)
    monkeypatch.setattr(progress.shutil, "get_terminal_size", lambda fallback=None: type("S", (), {"columns": 60})())
    out = FakeTTY()
    rep = Reporter(stream=out, min_interval=0.0)
    assert rep.enabled and not rep.plain
    rep.start(1000, "a-rather-long-sweep-label")
    for _ in range(1000):
        rep.advance()
    rep.info("a message")
    rep.finish()
    for segment in out.getvalue().replace("\n", "\r").split("\r"):
        assert len(segment) <= 59  # every redraw stays on one terminal line


def test_quiet_switch_and_non_terminals(monkeypatch):
    monkeypatch.setenv("PARTICLEGAN_QUIET", "1")
    assert not Reporter(stream=FakeTTY()).enabled
    monkeypatch.delenv("PARTICLEGAN_QUIET")
    monkeypatch.delenv("CI", raising=False)
    assert Reporter(stream=FakeTTY()).enabled
    assert not Reporter(stream=io.StringIO()).enabled  # a pipe or log file: quiet


def test_notebook_gets_plain_lines(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("PARTICLEGAN_QUIET", raising=False)
    monkeypatch.setitem(sys.modules, "ipykernel", object())
    out = io.StringIO()
    rep = Reporter(stream=out)
    assert rep.enabled and rep.plain
    rep.start(50, "run")
    for _ in range(50):
        rep.advance()
    rep.finish()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and 10 <= len(lines) <= 11
    assert lines[-1].startswith("run [") and "50/50" in lines[-1]
