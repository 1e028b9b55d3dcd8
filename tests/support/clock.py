"""Timing tests against the fixed windows of the limits."""

import time

from django.utils import timezone


def wait_for_a_fresh_minute(seconds_needed: float = 10) -> None:
    """Requests-per-minute windows are fixed UTC minutes: start a test early in one."""
    left = 60 - timezone.now().second - timezone.now().microsecond / 1e6
    if left < seconds_needed:
        time.sleep(left + 0.05)
