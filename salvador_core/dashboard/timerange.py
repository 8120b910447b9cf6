"""The task list's time-range filter: `from` and `to`, each an ISO 8601 date-time
(`2024-05-01T12:00:00Z`; without an offset it is UTC) or an age (`15m`, `2h`, `1d`, `2w`:
that long before now).

A task id starts with its creation time (`new_task_id`: 12 hex digits of epoch
milliseconds, then random digits), and every backend lists in ascending id order, reading
only ids greater than the cursor it is given (memory, sqlite, redis, postgres and nats
compare the cursor with ids as strings). So a range of creation times is a range of ids:
`from` becomes a cursor, its 12 digits alone, which sorts before every id made in that
millisecond or later, and `to` the last 12-digit prefix kept. A listing then starts at the
first task of the range, reading nothing created before it, and stops at the first task
past it, with no change to the backend protocol. Both ends are inclusive, to the
millisecond; "created" is the time in the id, taken as `submit` builds the task.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from salvador_core.admin import parse_duration
from salvador_core.task import ID_TIME_DIGITS, id_time_prefix

_FORMS = "an ISO 8601 date-time (2024-05-01T12:00:00Z) or an age (90s, 15m, 2h, 1d, 2w)"


class TimeRangeError(ValueError):
    """A `from` or `to` the filter cannot use; the message says which and what fits."""


@dataclass(frozen=True)
class TimeRange:
    """Tasks created from `start` to `end`, both inclusive (None: open on that side)."""

    start: datetime | None
    end: datetime | None

    @classmethod
    def parse(cls, start: str, end: str, *, now: datetime) -> TimeRange | None:
        """The range `from=start&to=end` asks for (None when both are empty), ages counted
        back from `now`."""
        first = _moment("from", start, now) if start.strip() else None
        last = _moment("to", end, now) if end.strip() else None
        if first is None and last is None:
            return None
        if first is not None and last is not None and first > last:
            raise TimeRangeError(f"from ({_iso(first)}) is after to ({_iso(last)}): swap them")
        return cls(first, last)

    @property
    def cursor(self) -> str | None:
        """The listing cursor just before the first id created at `start` or later."""
        return None if self.start is None else id_time_prefix(self.start)

    def holds(self, task_id: str) -> bool:
        """Whether the task with this id was created within the range."""
        made = task_id[:ID_TIME_DIGITS]
        if self.start is not None and made < id_time_prefix(self.start):
            return False
        return self.end is None or made <= id_time_prefix(self.end)

    def describe(self) -> str:
        """The range for people, in UTC to the second."""
        if self.start is not None and self.end is not None:
            return f"created between {_iso(self.start)} and {_iso(self.end)}"
        if self.start is not None:
            return f"created since {_iso(self.start)}"
        assert self.end is not None
        return f"created up to {_iso(self.end)}"

    def to_dict(self) -> dict[str, str | None]:
        return {"from": None if self.start is None else _iso(self.start, "milliseconds"),
                "to": None if self.end is None else _iso(self.end, "milliseconds")}


def _moment(name: str, text: str, now: datetime) -> datetime:
    """`text` as a UTC datetime: an age before `now`, or an ISO 8601 date-time."""
    value = text.strip()
    if value[-1].isalpha() and value[-1] not in "Zz":
        try:
            return now - timedelta(seconds=parse_duration(value))
        except ValueError:
            raise TimeRangeError(f"{name}={text!r} is not a time; write {_FORMS}") from None
        except OverflowError:
            raise TimeRangeError(f"{name}={text!r} reaches back beyond year 1; write a shorter age") from None
    # Python before 3.11 reads no "Z" suffix.
    iso = value[:-1] + "+00:00" if value[-1] in "Zz" else value
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        hint = " (an age needs a unit)" if value.replace(".", "", 1).isdigit() else ""
        raise TimeRangeError(f"{name}={text!r} is not a time{hint}; write {_FORMS}") from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError:
        raise TimeRangeError(f"{name}={text!r} is out of range; write a year from 1 to 9999") from None


def _iso(moment: datetime, timespec: str = "seconds") -> str:
    return moment.isoformat(timespec=timespec).replace("+00:00", "Z")
