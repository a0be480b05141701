"""fleetscore: train, schedule and run batch anomaly scoring for IoT fleets, one model per (device, sensor).

The public API is :class:`Fleet` (everything the CLI and the web app do) and :func:`load_config`.
Heavy modules load on first use, so ``import fleetscore`` stays fast.
"""

from __future__ import annotations

from typing import Any

from fleetscore.version import __version__

__all__ = [
    "Config",
    "ConfigError",
    "Fleet",
    "FleetscoreError",
    "InputError",
    "ModelFormatError",
    "NotFoundError",
    "RunRecord",
    "RunStatus",
    "StorageError",
    "__version__",
    "load_config",
]

_LAZY = {
    "Config": "fleetscore.config",
    "load_config": "fleetscore.config",
    "Fleet": "fleetscore.api",
    "RunRecord": "fleetscore.core.runs",
    "RunStatus": "fleetscore.core.runs",
    "FleetscoreError": "fleetscore.errors",
    "InputError": "fleetscore.errors",
    "ConfigError": "fleetscore.errors",
    "NotFoundError": "fleetscore.errors",
    "ModelFormatError": "fleetscore.errors",
    "StorageError": "fleetscore.errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fleetscore' has no attribute {name!r}")
