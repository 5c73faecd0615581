"""Which days a DAG run processes: a pure function of the run's schedule fields, never of `now()`, so a
rerun or a backfill of a logical date processes exactly the same days.

The scheduled DAGs use daily data intervals (`CronDataIntervalTimetable`): the run of logical date D
covers the UTC day D, [D, D + 1 day), and starts once that day is over. A run without a real interval (a
trigger timetable, or a manual run with a zero-length interval) processes the day before its logical
date (the last complete day). Explicit `start` / `end` (the Airflow form, backfills by hand) win.

>>> from datetime import datetime, UTC
>>> d = datetime(2026, 1, 5, tzinfo=UTC)
>>> run_days(d, datetime(2026, 1, 6, tzinfo=UTC), d)
(datetime.date(2026, 1, 5), datetime.date(2026, 1, 5))
>>> run_days(d, datetime(2026, 1, 6, tzinfo=UTC), d, lookback_days=2)
(datetime.date(2026, 1, 3), datetime.date(2026, 1, 5))
>>> run_days(d, d, d)  # a point in time: the day that just ended
(datetime.date(2026, 1, 4), datetime.date(2026, 1, 4))
>>> run_days(None, None, None, start="2026-02-01")
(datetime.date(2026, 2, 1), datetime.date(2026, 2, 1))
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

__all__ = ["run_days"]


def _as_date(value: str | date) -> date:
    return value if isinstance(value, date) and not isinstance(value, datetime) else date.fromisoformat(str(value)[:10])


def run_days(
    interval_start: datetime | None,
    interval_end: datetime | None,
    logical_date: datetime | None,
    *,
    run_after: datetime | None = None,
    start: str | date | None = None,
    end: str | date | None = None,
    lookback_days: int = 0,
) -> tuple[date, date]:
    """First and last day (inclusive, UTC) of a run: explicit `start`/`end`, else the run's data interval
    extended `lookback_days` back (training reads the recent past too; the report never does: 0)."""
    if lookback_days < 0:
        raise ValueError(f"lookback_days must be >= 0, got {lookback_days}")
    if start:
        first = _as_date(start)
        last = _as_date(end) if end else first
    else:
        if interval_start is not None and interval_end is not None and interval_end > interval_start:
            first = interval_start.date()
            last = (interval_end - timedelta(microseconds=1)).date()
        else:
            base = logical_date or run_after
            if base is None:
                raise ValueError("a run without a data interval, logical date or run_after needs explicit days")
            first = last = (base - timedelta(days=1)).date()
        first -= timedelta(days=lookback_days)
    if last < first:
        raise ValueError(f"the last day {last} is before the first {first}")
    return first, last
