"""The failed-attempt limiter locks a key after its limit and frees it when the window passes."""

from __future__ import annotations

import time

import pytest

from viewer_api.problems import HTTPProblem
from viewer_api.rate_limit import FailureLimiter


def test_lockout_after_limit_and_release_after_window() -> None:
    limiter = FailureLimiter(limit=3, window_seconds=0.3)
    for _ in range(3):
        limiter.check("u")
        limiter.failed("u")
    with pytest.raises(HTTPProblem) as refused:
        limiter.check("u")
    assert refused.value.status == 429 and "Retry-After" in refused.value.headers
    limiter.check("other")  # keys are independent
    time.sleep(0.35)
    limiter.check("u")  # the window passed


def test_success_clears_the_count() -> None:
    limiter = FailureLimiter(limit=2, window_seconds=60)
    limiter.failed("u")
    limiter.succeeded("u")
    limiter.failed("u")
    limiter.check("u")
