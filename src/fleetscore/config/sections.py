"""The small sections of fleetscore.toml: ``[storage]``, ``[catalog]``, ``[executor]``, ``[train]``, ``[web]``.

Each is a frozen value object with ``DEFAULT_*`` constants, the toml keys it takes (``KEYS``: toml
key → field and parser) and ``checked(where)``, which validates the merged values and names where
a bad one came from. ``[schedule]`` and ``[ingest]`` have modules of their own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

from fleetscore.config.values import Parser, boolean, check_range, number, text, whole, whole_seconds
from fleetscore.errors import ConfigError

DEFAULT_EXECUTOR = "local"
EXECUTORS = ("local", "ray")
#: Scoring kernel of ocsvm models: numba when installed (``auto``), or forced.
DEFAULT_KERNEL = "auto"
KERNELS = ("auto", "numba", "numpy")
#: Whether a local run's tasks may run in the driver process: by the planned cost (``auto``), or always, or never.
IN_PROCESS = ("auto", "always", "never")
#: A task of one shard takes seconds: one still running after an hour is hung (a stuck read, a wedged library).
DEFAULT_TASK_TIMEOUT_S = 3600
#: Scoring cost (rows × support vectors) a shard aims for when training plans its shards.
DEFAULT_SHARD_MODELS = 2000
#: nu / gamma unset (None): chosen per model unless pinned; see fleetscore.services.tuning for "auto".
DEFAULT_NU = None
DEFAULT_GAMMA = None
DEFAULT_FEATURES = "auto"
DEFAULT_KIND = "auto"
DEFAULT_ALARM_RATE = None


@dataclass(frozen=True, kw_only=True)
class _UrlSection:
    """A section holding one location (``url``)."""

    url: str

    KEYS: ClassVar[dict[str, tuple[str, Parser]]] = {"url": ("url", text)}

    def checked(self, where: str) -> _UrlSection:
        return self


@dataclass(frozen=True, kw_only=True)
class StorageSettings(_UrlSection):
    """``[storage]``: where data, models, predictions and logs live (local path, s3://, az://).

    ``shared``: a local path that every node of a Ray cluster mounts too (e.g. NFS); without it a run on
    Ray workers of other hosts is refused, since they would read and write their own disks.
    """

    shared: bool = False

    KEYS: ClassVar[dict[str, tuple[str, Parser]]] = {"url": ("url", text), "shared": ("shared", boolean)}


class CatalogSettings(_UrlSection):
    """``[catalog]``: the SQL database of versions, runs and schedules (SQLite default, PostgreSQL)."""


def kernel_choice(value: object, where: str) -> str:
    """A scoring kernel name, case and spaces ignored; ConfigError naming ``where`` otherwise."""
    choice = text(value, where).strip().lower()
    if choice not in KERNELS:
        raise ConfigError(f"{where}: kernel must be one of {', '.join(KERNELS)}, got {value!r}")
    return choice


def _default_workers() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True, kw_only=True)
class ExecutorSettings:
    """``[executor]``: where tasks run (local process pool or Ray), how many at once, shard size, kernel."""

    kind: str = DEFAULT_EXECUTOR
    workers: int = field(default_factory=_default_workers)
    ray_address: str | None = None
    #: Ray's own ``RAY_ADDRESS`` from the environment (what ``ray.init()`` joins when no address is given).
    ray_env_address: str | None = None
    shard_models: int = DEFAULT_SHARD_MODELS
    kernel: str = DEFAULT_KERNEL
    in_process: str = "auto"
    #: Seconds a task may run in a worker before the worker is ended and the task fails for retry (0: never).
    task_timeout_s: int = DEFAULT_TASK_TIMEOUT_S

    KEYS: ClassVar[dict[str, tuple[str, Parser]]] = {
        "kind": ("kind", text), "workers": ("workers", whole), "ray_address": ("ray_address", text),
        "shard_models": ("shard_models", whole), "kernel": ("kernel", kernel_choice), "in_process": ("in_process", text),
        "task_timeout": ("task_timeout_s", whole_seconds(allow_zero=True))}

    def checked(self, where: str) -> ExecutorSettings:
        if self.kind not in EXECUTORS:
            raise ConfigError(f"{where}: executor must be one of {', '.join(EXECUTORS)}, got {self.kind!r}")
        check_range(where, "workers", self.workers, 1, 1024)
        check_range(where, "shard_models", self.shard_models, 1, 1_000_000)
        if self.kernel not in KERNELS:
            raise ConfigError(f"{where}: kernel must be one of {', '.join(KERNELS)}, got {self.kernel!r}")
        if self.in_process not in IN_PROCESS:
            raise ConfigError(f"{where}: in_process must be one of {', '.join(IN_PROCESS)}, got {self.in_process!r}")
        return self


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """``[train]``: what ``train`` fits when flags leave it open (see `fleetscore.services.tuning`)."""

    kind: str = DEFAULT_KIND
    features: str = DEFAULT_FEATURES
    nu: float | None = DEFAULT_NU
    gamma: str | None = DEFAULT_GAMMA
    alarm_rate: float | None = DEFAULT_ALARM_RATE

    KEYS: ClassVar[dict[str, tuple[str, Parser]]] = {
        "kind": ("kind", text), "features": ("features", text), "nu": ("nu", number), "gamma": ("gamma", text),
        "alarm_rate": ("alarm_rate", number)}

    def checked(self, where: str) -> TrainSettings:
        if self.nu is not None and not 0 < self.nu <= 1:
            raise ConfigError(f"{where}: nu must be in (0, 1], got {self.nu}")
        if self.alarm_rate is not None and not 0 < self.alarm_rate < 0.5:
            raise ConfigError(f"{where}: alarm_rate must be in (0, 0.5), got {self.alarm_rate}")
        return self


@dataclass(frozen=True, kw_only=True)
class WebSettings:
    """``[web]``: the HTTP server. Its one setting is a secret, so it comes from the environment only:
    ``FLEETSCORE_TOKEN`` (writes and pages then need ``Authorization: Bearer <token>``)."""

    token: str | None = field(default=None, repr=False)

    KEYS: ClassVar[dict[str, tuple[str, Parser]]] = {}

    def checked(self, where: str) -> WebSettings:
        """Refuse a token that is only whitespace (it would pass for set) or has whitespace around it (never matches)."""
        if self.token and not self.token.strip():
            raise ConfigError(f"{where}: FLEETSCORE_TOKEN is only whitespace; set a real token or unset it")
        if self.token and self.token != self.token.strip():
            raise ConfigError(f"{where}: FLEETSCORE_TOKEN starts or ends with whitespace, which clients cannot send "
                              "in an Authorization header; remove it")
        return self
