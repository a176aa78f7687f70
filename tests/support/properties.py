"""The property tests' shared settings: how many examples (CI's quick pass, or a hunt), and a
guard that turns a hang into a failure."""

from __future__ import annotations

import contextlib
import os
import signal

from hypothesis import HealthCheck, settings

from tests.support import harness

# AMI_BUNDLER_FUZZ_EXAMPLES=5000 (and _RANDOM=1 for fresh seeds) turns CI's quick pass into a hunt.
EXAMPLES = int(os.environ.get("AMI_BUNDLER_FUZZ_EXAMPLES", "60"))
FAST = settings(max_examples=EXAMPLES, derandomize=not os.environ.get("AMI_BUNDLER_FUZZ_RANDOM"),
                deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SLOWER = settings(FAST, max_examples=max(1, EXAMPLES // 2))


@contextlib.contextmanager
def no_hang(seconds: float = 10.0):
    """Turn a hang into a test failure instead of a stuck CI job."""
    def alarm(signum, frame):
        raise harness.Finding(f"no result after {seconds}s: a hang")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
