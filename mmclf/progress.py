"""Progress bars that read well in a terminal and in a log file.

`progress_bar(...)` takes tqdm's arguments. On a terminal it is tqdm's bar. When the output is not a
terminal (a launch script's log, `> run.log 2>&1`, a batch job), it is `LineProgress`: the same tqdm
statistics written as a whole line every `MMCLF_PROGRESS_INTERVAL` seconds (default 30) and once when a
bar that stays (`leave=True`, the default) ends, instead of a carriage-return redraw ten times a second.

Bars of other libraries (datasets' `map`, downloads) are tqdm bars too: `configure_for_logs()`, called
by the `mmclf` command before any of them is imported, makes them silent for their first interval (a
short bar writes nothing) and then redraw at most once per interval, when the output is not a terminal.
"""

from __future__ import annotations

import functools
import os
import sys
import time

INTERVAL_VARIABLE = "MMCLF_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0


def line_interval() -> float:
    text = os.environ.get(INTERVAL_VARIABLE, "")
    try:
        return float(text) if text else DEFAULT_INTERVAL
    except ValueError:
        raise ValueError(f"{INTERVAL_VARIABLE} must be a number of seconds, got {text!r}") from None


def is_terminal(stream) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


def configure_for_logs() -> None:
    """When stderr is not a terminal, other tqdm bars of the process show nothing during their first interval
    (a short bar writes nothing) and then redraw at most once per interval (tqdm reads TQDM_* variables when it is
    imported, so call this first)."""
    try:
        interval = line_interval()
    except ValueError as error:  # the command's bad-input convention: a one-line error, exit code 2
        print(f"mmclf: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if not is_terminal(sys.stderr):
        os.environ.setdefault("TQDM_MININTERVAL", str(interval))
        os.environ.setdefault("TQDM_DELAY", str(interval))


def progress_bar(*args, **kwargs):
    """A tqdm bar on a terminal, a `LineProgress` otherwise (same arguments)."""
    from tqdm.auto import tqdm

    if is_terminal(kwargs.get("file") or sys.stderr):
        return tqdm(*args, **kwargs)
    return line_progress_class()(*args, **kwargs)


@functools.cache
def line_progress_class():
    """`LineProgress`, defined on first use: tqdm is imported only when a bar is made (after configure_for_logs)."""
    from tqdm.std import tqdm

    class LineProgress(tqdm):
        """tqdm writing whole lines: one per `interval` seconds while it runs, a last one when it ends if it
        stays (`leave`); never a carriage return."""

        def __init__(self, *args, interval: float | None = None, **kwargs):
            self.interval = line_interval() if interval is None else interval
            self._last_line = None  # set when tqdm first displays, at the start: no line then
            kwargs.setdefault("ascii", True)
            kwargs.setdefault("delay", 0)
            kwargs.setdefault("mininterval", 0.5)  # how often tqdm counts (not writes); TQDM_MININTERVAL is for others
            super().__init__(*args, **kwargs)

        def display(self, msg=None, pos=None):
            now = time.monotonic()
            if msg is not None or self._last_line is None or now - self._last_line < self.interval:
                self._last_line = self._last_line or now
                return True  # msg: tqdm clearing a bar, nothing to clear in a log
            self._write_line(now)
            return True

        def _write_line(self, now: float) -> None:
            self._last_line = now
            self.fp.write(self.__str__().rstrip() + "\n")
            self.fp.flush()

        def close(self):
            if self.disable:
                return
            leave = abs(self.pos) == 0 if self.leave is None else self.leave
            if leave and hasattr(self, "last_print_t"):
                self._ema_dt = lambda: None  # the final line shows the average rate, as tqdm's own does
                with self._lock:
                    self._write_line(time.monotonic())
            self.sp = None  # tqdm's close would write a newline or a carriage return
            super().close()

    return LineProgress

