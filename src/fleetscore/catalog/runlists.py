"""The ``run_lists`` table: a run's unhealthy models and keys without a model, one row per task and list.

A row holds the task's entries of one list in key order (JSON), its first `MAX_LISTED` apart (what a
run record lists) and their count, so a task writes one row however many entries it found. The table
is defined here, apart from :mod:`fleetscore.catalog.sql` (which joins it to the catalog's metadata),
so that the schema upgrade creating it (:mod:`fleetscore.catalog.migrate`) needs no catalog import.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from fleetscore.core.runs import MAX_LISTED

run_lists_table = sa.Table(
    "run_lists",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(32), nullable=False),
    sa.Column("list_name", sa.String(16), nullable=False),  # unhealthy or unmatched
    sa.Column("task", sa.Integer),  # null: moved from a run record by the v3 upgrade
    sa.Column("total", sa.Integer, nullable=False),
    sa.Column("head", sa.Text, nullable=False),  # JSON: the first MAX_LISTED entries
    sa.Column("entries", sa.Text, nullable=False),  # JSON: every entry, in key order
    sa.Index("ix_run_lists_run", "run_id", "list_name"),
)


def list_row(run_id: str, name: str, task: int | None, entries: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The row of one task's (None: a whole run's) entries of list ``name``, put in key order."""
    ordered = sorted(entries, key=lambda e: (e["device"], e["sensor"]))
    return dict(run_id=run_id, list_name=name, task=task, total=len(ordered), head=json.dumps(ordered[:MAX_LISTED]),
                entries=json.dumps(ordered))
