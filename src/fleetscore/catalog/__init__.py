"""The catalog: model versions, the released version, runs, tasks and per-model failures."""

from fleetscore.catalog import alerts, incidents, leases, schedules  # noqa: F401  (their tables join the catalog's metadata)
from fleetscore.catalog.sql import Catalog, VersionRecord

__all__ = ["Catalog", "VersionRecord"]
