"""A one-line progress report on stderr that is silent when stderr is not a terminal.

``ProgressLine(total, label)`` is refdiff's only progress output: a
carriage-return line (steps/s, and whatever fields the caller passes),
redrawn at most a few times a second, ended with a newline by
:meth:`close`. ``enabled=None`` means "only when stderr is a tty" (tqdm's
``disable=None``), so logs and CI output stay clean.
"""

from __future__ import annotations

import sys
import time

__all__ = ["ProgressLine"]


class ProgressLine:
    """Redraw ``label step/total  N it/s  key value ...`` on stderr (or ``stream``)."""

    def __init__(self, total: int, label: str = "", enabled=None, stream=None, min_interval: float = 0.25):
        self.stream = sys.stderr if stream is None else stream
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled, self.total, self.label = bool(enabled), int(total), label
        self.min_interval = float(min_interval)
        self._t0 = self._last = time.perf_counter()
        self._start_step = None
        self._drawn = False

    def update(self, step: int, force: bool = False, **fields) -> None:
        """Report that ``step`` steps are done (``fields`` are shown as ``key value``)."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._start_step is None:
            self._start_step, self._t0 = step, now
        if not force and (self.total <= 0 or step < self.total) and now - self._last < self.min_interval:
            return
        self._last = now
        rate = (step - self._start_step) / max(now - self._t0, 1e-9)
        count = f"{step}/{self.total}" if self.total > 0 else f"{step}"  # total 0: not known ahead
        parts = [f"{self.label} {count}".strip(), f"{rate:.1f} it/s"]
        parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items()]
        self.stream.write("\r" + "  ".join(parts) + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
