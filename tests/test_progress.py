import io
import os
import sys

import pytest

from mmclf import progress


class Clock:
    """time.monotonic for the progress module, advanced by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_bars_write_a_line_per_interval_without_carriage_returns(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    log = io.StringIO()  # not a terminal
    bar = progress.progress_bar(total=100, desc="epoch 1/3", file=log, interval=30, mininterval=0)
    for step in range(100):
        clock.now += 1.0  # one step a second: a line every 30 steps
        bar.update(1)
        bar.set_postfix(loss=f"{1 / (step + 1):.3f}")
    bar.close()
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert [line.split("|")[0] for line in lines] == ["epoch 1/3:  30%", "epoch 1/3:  60%", "epoch 1/3:  90%",
                                                      "epoch 1/3: 100%"]
    assert lines[-1].endswith("loss=0.010]") and "100/100" in lines[-1]


def test_a_bar_that_does_not_stay_ends_without_a_line():
    log = io.StringIO()
    for _ in progress.progress_bar(range(5), desc="evaluate", leave=False, file=log, interval=30):
        pass
    assert log.getvalue() == ""


def test_terminals_get_tqdm_and_logs_get_a_redraw_interval(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    bar = progress.progress_bar(range(3), file=Terminal())
    assert not isinstance(bar, progress.line_progress_class())
    bar.close()
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    monkeypatch.delenv("TQDM_DELAY", raising=False)
    monkeypatch.setenv(progress.INTERVAL_VARIABLE, "12")
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    progress.configure_for_logs()
    assert progress.line_interval() == 12.0
    assert os.environ["TQDM_MININTERVAL"] == os.environ["TQDM_DELAY"] == "12.0"


def test_a_bad_interval_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setenv(progress.INTERVAL_VARIABLE, "soon")
    with pytest.raises(SystemExit) as exit:
        progress.configure_for_logs()
    assert exit.value.code == 2
    assert capsys.readouterr().err == "mmclf: error: MMCLF_PROGRESS_INTERVAL must be a number of seconds, got 'soon'\n"
