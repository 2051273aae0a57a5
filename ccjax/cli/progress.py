"""The one-line progress bar ``ccjax search`` draws on a terminal."""
from __future__ import annotations

import sys
import threading
import time
from typing import Optional


class _ProgressBar:
    """A one-line progress bar on stderr, redrawn by a timer thread."""

    def __init__(self, budget: Optional[float], stream=None, width: int = 30):
        self.budget = budget
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.info = None
        self.start = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.enabled = hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, info) -> None:
        self.info = info

    def _line(self) -> str:
        elapsed = time.perf_counter() - self.start
        if self.budget:
            frac = min(1.0, elapsed / self.budget)
            filled = int(frac * self.width)
            bar = "#" * filled + "-" * (self.width - filled)
            head = f"[{bar}] {elapsed:5.1f}/{self.budget:.0f}s"
        else:
            head = f"{elapsed:6.1f}s"
        if self.info is None:
            return head + " starting"
        lb = "" if self.info.lower_bound is None else f" lb {self.info.lower_bound}"
        return f"{head} best {self.info.best_cost}{lb} ({self.info.phase})"

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self.stream.write("\r" + self._line().ljust(72))
            self.stream.flush()

    def __enter__(self):
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self._stop.set()
            self._thread.join()
            self.stream.write("\r" + " " * 72 + "\r")
            self.stream.flush()
