"""``Retry-After`` in both its forms, as the Python client and the endpoint client read it."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest

from ethostral_serve.http_dates import retry_after_seconds

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("-5", 0.0),  # never a negative wait
        (formatdate(NOW + 30, usegmt=True), 30.0),  # "... GMT"
        (formatdate(NOW + 90), 90.0),  # "... -0000": parses without a zone, read as GMT
        (formatdate(NOW + 45, localtime=True), 45.0),  # another zone's offset
        (formatdate(NOW - 3600, usegmt=True), 0.0),  # a date already past: now
    ],
)
def test_seconds_and_http_dates(value: str, seconds: float) -> None:
    assert retry_after_seconds(value, now=NOW) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [None, "", "  ", "soon", "inf", "nan", "Wed, 99 Oct 2015"])
def test_no_or_unreadable_values_ask_nothing(value: str | None) -> None:
    assert retry_after_seconds(value, now=NOW) is None


def test_dates_count_from_the_current_time_by_default() -> None:
    asked = retry_after_seconds(formatdate(time.time() + 3600, usegmt=True))
    assert asked is not None and 3500 < asked <= 3600
