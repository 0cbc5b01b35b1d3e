"""Progress bars draw on a terminal only (tqdm's disable=None) and never count when off."""

import sys

from synthvit.runtime import progress_bar


def test_bar_is_off_when_stderr_is_not_a_terminal():
    assert not sys.stderr.isatty()  # pytest captures stderr
    bar = progress_bar(range(25))
    assert bar.disable and list(bar) == list(range(25)) and bar.n == 0  # a disabled bar counts nothing


def test_bar_draws_on_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = progress_bar(range(3), desc="work")
    assert not bar.disable and list(bar) == [0, 1, 2] and bar.n == 3
    assert "work" in capsys.readouterr().err
