"""Cron expressions of periodic handlers (``@handler(..., cron="0 2 * * *", tz="...")``).

Parsing and stepping through time is cronsim's (Debian cron's rules, DST included); this
module turns an instant of the Redis clock into the fire time just behind it and the one
ahead, in epoch ms, which is all periodic.py and schedule.lua need. Imported only when a
handler has ``cron=``, so workers without one load neither cronsim nor zoneinfo.
"""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime, timedelta, tzinfo

from cronsim import CronSim, CronSimError

#: Fire times stepped through per look: an hour of a per-second expression (the hour that
#: repeats in autumn, ~20 ms), at most; past that the next look (within a minute) goes on.
MAX_STEPS = 4000


class Cron:
    """One handler's ``cron=`` expression in its time zone."""

    def __init__(self, expression: str, tz: str = "UTC") -> None:
        if not isinstance(expression, str) or not isinstance(tz, str):
            raise ValueError(f"cron= and tz= are strings, got {expression!r} and {tz!r}")
        self.expression = expression
        self.tz = tz
        self._zone = _zone(tz)
        try:
            upcoming = CronSim(expression, datetime.now(self._zone))
        except CronSimError as exc:  # "Bad minute", "Wrong number of fields" ...
            raise ValueError(f"cron={expression!r} is not a cron expression: {exc}") from None
        if next(upcoming, None) is None:  # e.g. "0 0 30 2 *"
            raise ValueError(f"cron={expression!r} never fires")

    def around(self, now_ms: int) -> tuple[int, int | None]:
        """The fire times around ``now_ms``, in epoch ms.

        The last one at or before it (0 if none), and the next one after it (None if none
        within cronsim's 50 years).
        """
        now = datetime.fromtimestamp(now_ms / 1000, self._zone)
        # cronsim compares wall-clock times: in the hour that repeats when clocks go back, its
        # backward search misses the second pass, and a fire time it finds (either way) can
        # carry the first pass's offset, so lie behind ``now``. Only its backward answer's
        # neighbourhood is taken from it: the answer itself comes from stepping forward from
        # there, in epoch ms, keeping only times that move on (each fire time once).
        anchor = self._behind(now)
        last = _ms(anchor) if anchor else 0
        upcoming = CronSim(self.expression, anchor - timedelta(seconds=1) if anchor else now)
        for _ in range(MAX_STEPS):
            at = next(upcoming, None)
            if at is None:
                return last, None
            if _ms(at) <= last:
                continue
            if _ms(at) > now_ms:
                return last, _ms(at)
            last = _ms(at)
        return last, None  # a look a minute later starts from nearer

    def _behind(self, now: datetime) -> datetime | None:
        """A fire time at or before ``now`` (cronsim's backward search: maybe not the last)."""
        # cronsim steps strictly before a whole second when going back: a microsecond past it
        # makes a fire time exactly at ``now`` count as come.
        at: datetime | None = now if now.microsecond else now + timedelta(microseconds=1)
        for _ in range(3):  # an answer with the first pass's offset can lie ahead of ``now``
            assert at is not None
            at = next(CronSim(self.expression, at, reverse=True), None)
            if at is None or at <= now:
                return at
        return None

    def __repr__(self) -> str:
        return f"Cron({self.expression!r}, tz={self.tz!r})"


def _zone(name: str) -> tzinfo:
    if name == "UTC":
        return UTC  # needs no time zone database (a slim image may have none)
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"tz={name!r} is not a known time zone (an IANA name such as 'Europe/Berlin'; "
            "without the system's time zone database, pip install tzdata)"
        ) from None


def _ms(at: datetime) -> int:
    return round(at.timestamp() * 1000)
