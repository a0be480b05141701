"""Which windows a schedule must run now: a pure function of (schedule, its cursor, now).

A schedule fires on its cron (UTC). A fire at time ``t`` stands for the latest whole window that
ended at least ``lag`` before ``t``: scoring windows are aligned to their length from the Unix epoch
(hourly windows run [HH:00, HH+1:00)), training windows end on the hour. The cursor is the last fire
time already planned, so a fire is planned once; after downtime every missed fire is due, oldest
first, but at most ``max_catch_up`` of the most recent windows: older missed windows are skipped
(``fleetscore backfill`` runs them on purpose). Several fires that map to one window plan it once.

Pure: no I/O, no clock (``now`` is an argument); croniter only computes dates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fleetscore.core.times import HOUR_US, SECOND_US
from fleetscore.errors import InputError

KINDS = ("score", "train")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class ScheduleSpec:
    """One schedule: what it runs (score or train), on which cron, over which window."""

    name: str
    cron: str
    window_s: int
    lag_s: int = 0
    kind: str = "score"
    version: str | None = None  # score with this version; None = the released one at run time
    release: bool = True  # train: release the new version
    paused: bool = False
    cursor_us: int = 0  # fire times at or before the cursor are planned already
    created_at: int = 0  # µs; stamped by the catalog when the schedule is added

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class DueWindow:
    """A window [from_us, to_us) a schedule must run, and the fire time that made it due."""

    fire_us: int
    from_us: int
    to_us: int


@dataclass(frozen=True)
class Plan:
    """The windows due now (oldest first), the span skipped beyond ``max_catch_up``, the new cursor."""

    due: tuple[DueWindow, ...]
    skipped: tuple[int, int] | None
    cursor_us: int


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InputError(f"schedule name must be 1-64 letters, digits, '_', '.' or '-', got {str(name)[:80]!r}")
    return name


def check_cron(expr: str) -> str:
    """A standard 5-field cron (minute hour day-of-month month day-of-week) or @hourly/@daily/...; else InputError."""
    from croniter import CroniterError, croniter

    text = " ".join(str(expr).split())
    fields = text.split(" ")
    if not text.startswith("@") and len(fields) != 5:
        raise InputError(f"bad cron {text[:80]!r}: expected 5 fields (minute hour day-of-month month day-of-week), "
                         f"got {len(fields)}")
    try:
        croniter(text, 0.0).get_next(float)
    except (CroniterError, ValueError, KeyError) as exc:
        raise InputError(f"bad cron {text[:80]!r}: {exc}") from None
    return text


def new_schedule(name: str, cron: str, window_s: int, lag_s: int, *, train: bool, version: str | None,
                 released: bool, release: bool, cursor_us: int) -> ScheduleSpec:
    """A checked new schedule: scoring (with ``version``, or the ``released`` one at run time) or training."""
    if version and released:
        raise InputError("give --version V or --released, not both")
    if train and version:
        raise InputError("--version is for scoring schedules; a --train schedule makes new versions")
    if not release and not train:
        raise InputError("--no-release only applies to --train schedules")
    return ScheduleSpec(name=check_name(name), cron=check_cron(cron), window_s=window_s, lag_s=lag_s,
                        kind="train" if train else "score", version=version or None, release=release,
                        cursor_us=cursor_us)


def window_of(spec: ScheduleSpec, fire_us: int) -> DueWindow:
    """The window a fire at ``fire_us`` stands for."""
    align = spec.window_s * SECOND_US if spec.kind == "score" else HOUR_US
    end = fire_us - spec.lag_s * SECOND_US
    to_us = end - end % align
    return DueWindow(fire_us, to_us - spec.window_s * SECOND_US, to_us)


def next_fire(spec: ScheduleSpec, after_us: int) -> int:
    """The first fire time strictly after ``after_us``."""
    from croniter import croniter

    return int(round(croniter(spec.cron, after_us / SECOND_US).get_next(float) * SECOND_US))


def plan_due(spec: ScheduleSpec, now_us: int, max_catch_up: int) -> Plan:
    """Windows of fires in (cursor, now] not yet planned: at most ``max_catch_up`` newest, oldest first."""
    from croniter import croniter

    if spec.paused or now_us <= spec.cursor_us:
        return Plan((), None, spec.cursor_us)
    it = croniter(spec.cron, now_us / SECOND_US + 0.001)  # +1 ms: a fire exactly at now is due
    picked: dict[int, DueWindow] = {}
    more = False
    while True:
        fire = int(round(it.get_prev(float) * SECOND_US))
        if fire <= spec.cursor_us:
            break
        window = window_of(spec, fire)
        if window.from_us in picked:
            picked[window.from_us] = window  # keep the earliest fire of the window
            continue
        if len(picked) >= max_catch_up:
            more = True
            break
        picked[window.from_us] = window
    due = tuple(sorted(picked.values(), key=lambda w: w.from_us))
    skipped = None
    if more:
        first = window_of(spec, next_fire(spec, spec.cursor_us))
        skipped = (first.from_us, due[0].from_us if due else first.to_us)
    return Plan(due, skipped, now_us)
