"""The catalog: model versions, the released version, runs, tasks and per-model failures."""

from fleetscore.catalog.sql import Catalog, VersionRecord

__all__ = ["Catalog", "VersionRecord"]
