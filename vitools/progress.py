"""Progress for long runs: a tqdm bar on a terminal, periodic plain lines otherwise."""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

__all__ = ["Progress"]


class Progress:
    """Reports ``done`` out of ``total`` with a few named numbers.

    On a TTY it is a tqdm bar; elsewhere (CI logs, pipes) it prints one line at most every
    ``every_s`` seconds and one at the end, so logs stay readable. ``enabled=False`` is silent.
    """

    def __init__(self, total: int, desc: str, enabled: bool = True, every_s: float = 5.0, stream=None):
        self.total, self.desc, self.enabled, self.every_s = total, desc, enabled, every_s
        self.stream = stream or sys.stderr
        self.done = 0
        self._last = self._start = time.perf_counter()
        self._bar = None
        self._printed = None  # the done of the last plain line
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            self._bar = tqdm(total=total, desc=desc, file=self.stream, leave=True, dynamic_ncols=True)

    def update(self, done: int, **numbers: float) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(done - self.done)
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in numbers.items()}, refresh=False)
        elif time.perf_counter() - self._last >= self.every_s:
            self._line(done, numbers)
        self.done = done

    def close(self, status: str = "", **numbers: float) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            if numbers:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in numbers.items()})
            self._bar.close()
        elif status or numbers or self._printed != self.done:  # not the line update just printed
            self._line(self.done, numbers, status)

    def _line(self, done: int, numbers: dict, status: str = "") -> None:
        self._last, self._printed = time.perf_counter(), done
        parts = [f"{self.desc}: {done}/{self.total} ({self._last - self._start:.1f}s)"]
        parts += [f"{k}={v:.4g}" for k, v in numbers.items()] + ([f"[{status}]"] if status else [])
        print(" ".join(parts), file=self.stream, flush=True)
