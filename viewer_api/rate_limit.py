"""Failed-attempt limiting for passwords (sign-in now, share-link passwords next).

After ``limit`` failures for the same key within ``window_seconds`` further attempts are
refused with 429 until the oldest failure leaves the window, even with the right password, so
guessing costs time whatever the answer. In-process: each API process counts its own attempts
(a Redis counter is the multi-process form).
"""

from __future__ import annotations

import threading
import time
from collections import deque

from viewer_api.problems import HTTPProblem


class FailureLimiter:
    def __init__(self, limit: int = 5, window_seconds: float = 900.0) -> None:
        self.limit = limit
        self.window_seconds = window_seconds
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> None:
        """Raise 429 problem+json (with Retry-After) while ``key`` is locked out."""
        now = time.monotonic()
        with self._lock:
            failures = self._failures.get(key)
            if failures is None:
                return
            while failures and now - failures[0] > self.window_seconds:
                failures.popleft()
            if not failures:
                del self._failures[key]
                return
            if len(failures) >= self.limit:
                wait = int(self.window_seconds - (now - failures[0])) + 1
                raise HTTPProblem(
                    429,
                    "Too many attempts",
                    f"{len(failures)} failed attempts; try again in {wait} s",
                    headers={"Retry-After": str(wait)},
                )

    def failed(self, key: str) -> None:
        with self._lock:
            self._failures.setdefault(key, deque()).append(time.monotonic())

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)
