"""Leases on the default SQLite catalog: one holder per key, expiry, takeover, cancel flag, races."""

from __future__ import annotations

from pathlib import Path

from sched_support import check_lease_rules, check_one_winner

from fleetscore.catalog.sql import Catalog


def test_lease_rules_on_sqlite(tmp_path: Path) -> None:
    catalog = Catalog(f"sqlite:///{tmp_path / 'c.db'}")
    check_lease_rules(catalog)
    catalog.close()


def test_racing_connections_get_one_lease(tmp_path: Path) -> None:
    check_one_winner(f"sqlite:///{tmp_path / 'c.db'}")
