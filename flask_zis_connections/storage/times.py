"""Times at the one resolution every backend keeps: whole epoch milliseconds.

The SQL schema stores datetimes as ``BigInteger`` milliseconds (integers compare and
index the same on every database, and SQLite has no timezone-aware type to get
wrong).  :class:`~.base.Storage` truncates every datetime it is handed to that
resolution before a backend sees it, so a value reads back equal from every backend,
whatever it keeps.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def to_ms(moment: datetime) -> int:
    """Epoch milliseconds of an aware datetime (a naive one is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MS


def from_ms(value: float) -> datetime:
    """The aware UTC datetime of epoch milliseconds (exact for integers; a fraction is
    kept to the microsecond)."""
    return _EPOCH + value * _MS


def at_ms(moment: datetime) -> datetime:
    """``moment`` as storage hands it back: aware UTC, truncated to the millisecond."""
    return _EPOCH + to_ms(moment) * _MS


def at_ms_or_none(moment: datetime | None) -> datetime | None:
    return None if moment is None else at_ms(moment)
