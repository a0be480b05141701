"""Schedules: cron-driven scoring and training runs, catch-up after downtime, leases, backfill, retention.

    plan.py       which windows are due: a pure function of (schedule, cursor, now)
    settings.py   the [schedule] section of fleetscore.toml (retries, backoff, lease, poll, catch-up)
    runner.py     scoring one window under a lease: new runs, retries of failed tasks, cancel
    scheduler.py  the scheduler loop (``fleetscore scheduler``, or a thread of ``fleetscore serve``)
    retention.py  ``fleetscore gc``: what is old enough to delete, and what must be kept

Heavy modules load on use: ``import fleetscore.core.schedule`` needs only croniter.
"""
