"""Parsing of the timestamps users type and files carry (RFC 3339, always timezone-aware UTC inside)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_instant(value: str, *, allow_now: bool = False, now: datetime | None = None) -> datetime:
    """Parse an RFC 3339 timestamp (``2026-11-10T02:00:00Z``, ``…+01:00``) into an aware UTC datetime.

    A bare date (``2026-11-10``) means 00:00:00 UTC of that day. A timestamp without an offset is refused:
    guessing the zone of a patch release or an evaluation time silently shifts approvals by hours.

    Raises:
        ValueError: with a message that says what was expected.
    """
    text = value.strip()
    if allow_now and text.lower() == "now":
        return (now or datetime.now(UTC)).astimezone(UTC)
    if _DATE_ONLY.match(text):
        try:
            d = date.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a valid calendar date ({exc})") from None
        return datetime(d.year, d.month, d.day, tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ValueError(
            f"{value!r} is not an RFC 3339 timestamp; write e.g. 2026-11-10T02:00:00Z or 2026-11-10T03:00:00+01:00"
        ) from None
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no UTC offset; add 'Z' for UTC or an offset such as +01:00")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{value!r} is outside the years 0001–9999 once converted to UTC") from None


def format_instant(value: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix, second precision unless sub-second detail is present."""
    value = value.astimezone(UTC)
    text = value.isoformat()
    return text.replace("+00:00", "Z")
