"""The explicit dependencies of a service call: storage, catalog, settings and clock.

`fleetscore.api.Fleet` builds one per home; services take it (and an executor where they dispatch
tasks) instead of a Fleet, so they never reach above themselves and tests can build one directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetscore.catalog import Catalog
from fleetscore.clock import Clock, wall_clock
from fleetscore.config import Config
from fleetscore.storage.fs import Storage


@dataclass(frozen=True)
class Context:
    """What every service needs: the home's storage and catalog, its settings, and now (``clock``, µs)."""

    storage: Storage
    catalog: Catalog
    config: Config
    clock: Clock = wall_clock

    @property
    def storage_url(self) -> str:
        """The storage root that workers open again in their own processes."""
        return self.config.storage.url
