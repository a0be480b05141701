"""Settings of a fleetscore home, merged in one place: defaults < fleetscore.toml < FLEETSCORE_* env < flags.

The home directory holds everything (data, catalog, logs) unless the toml points storage or the
catalog elsewhere. Secrets (cloud credentials, tokens) are never read from the toml: only from env.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from fleetscore.errors import ConfigError

DEFAULT_HOME = "./fleetscore-home"
DEFAULT_EXECUTOR = "local"
#: nu / gamma unset (None): chosen per model unless pinned; see fleetscore.tuning for "auto".
DEFAULT_NU = None
DEFAULT_GAMMA = None
DEFAULT_FEATURES = "auto"
DEFAULT_KIND = "auto"
DEFAULT_ALARM_RATE = None
#: Scoring cost (rows × support vectors) a shard aims for when training plans its shards.
DEFAULT_SHARD_MODELS = 2000
CONFIG_FILE = "fleetscore.toml"
EXECUTORS = ("local", "ray")


@dataclass(frozen=True, kw_only=True)
class Config:
    """Resolved settings; build with :func:`load_config`."""

    home: Path
    storage_url: str
    catalog_url: str
    executor: str = DEFAULT_EXECUTOR
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    ray_address: str | None = None
    shard_models: int = DEFAULT_SHARD_MODELS
    nu: float | None = DEFAULT_NU
    gamma: str | None = DEFAULT_GAMMA
    features: str = DEFAULT_FEATURES
    kind: str = DEFAULT_KIND
    alarm_rate: float | None = DEFAULT_ALARM_RATE
    extra: Mapping[str, Any] = field(default_factory=dict)

    def with_overrides(self, **overrides: Any) -> "Config":
        """A copy with the given non-None values replaced (how CLI flags apply)."""
        values = {k: v for k, v in overrides.items() if v is not None}
        return _validated(replace(self, **values), "flags")


# toml key (section.key) -> Config field
_TOML_KEYS = {
    ("storage", "url"): "storage_url",
    ("catalog", "url"): "catalog_url",
    ("executor", "kind"): "executor",
    ("executor", "workers"): "workers",
    ("executor", "ray_address"): "ray_address",
    ("executor", "shard_models"): "shard_models",
    ("train", "nu"): "nu",
    ("train", "gamma"): "gamma",
    ("train", "features"): "features",
    ("train", "kind"): "kind",
    ("train", "alarm_rate"): "alarm_rate",
}
# env var -> Config field
ENV_KEYS = {
    "FLEETSCORE_STORAGE_URL": "storage_url",
    "FLEETSCORE_CATALOG_URL": "catalog_url",
    "FLEETSCORE_EXECUTOR": "executor",
    "FLEETSCORE_WORKERS": "workers",
    "FLEETSCORE_RAY_ADDRESS": "ray_address",
    "FLEETSCORE_SHARD_MODELS": "shard_models",
}
#: Sections other parts of fleetscore own (ingest, web, schedule); kept as raw mappings in ``extra``.
_FREE_SECTIONS = ("ingest", "web", "schedule", "detection")


def load_config(home: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Resolve the settings for ``home`` (else $FLEETSCORE_HOME, else ./fleetscore-home)."""
    env = os.environ if env is None else env
    home_path = Path(home or env.get("FLEETSCORE_HOME") or DEFAULT_HOME).expanduser().absolute()
    if home_path.exists() and not home_path.is_dir():
        raise ConfigError(f"home {home_path} exists and is not a directory")
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    toml_path = home_path / CONFIG_FILE
    if toml_path.is_file():
        values, extra = _read_toml(toml_path)
    for name, key in ENV_KEYS.items():
        if env.get(name):
            values[key] = _coerce(key, env[name], name)
    config = Config(
        home=home_path,
        storage_url=values.pop("storage_url", str(home_path / "data")),
        catalog_url=values.pop("catalog_url", f"sqlite:///{home_path / 'catalog.db'}"),
        extra=extra,
        **values,
    )
    return _validated(config, str(toml_path) if toml_path.is_file() else "environment")


def _read_toml(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for section, body in data.items():
        if section in _FREE_SECTIONS and isinstance(body, dict):
            extra[section] = body
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: unknown top-level key '{section}'")
        for key, value in body.items():
            target = _TOML_KEYS.get((section, key))
            if target is None:
                known = ", ".join(f"{s}.{k}" for s, k in _TOML_KEYS)
                raise ConfigError(f"{path}: unknown key '{section}.{key}' (known: {known})")
            values[target] = _coerce(target, value, f"{path}: {section}.{key}")
    return values, extra


def _coerce(key: str, value: Any, where: str) -> Any:
    kinds = {f.name: f.type for f in fields(Config)}
    kind = kinds[key].removesuffix(" | None")
    try:
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if kind == "float":
            return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected text, got {value!r}")
    return value


def _validated(config: Config, where: str) -> Config:
    if config.executor not in EXECUTORS:
        raise ConfigError(f"{where}: executor must be one of {', '.join(EXECUTORS)}, got {config.executor!r}")
    if not 1 <= config.workers <= 1024:
        raise ConfigError(f"{where}: workers must be between 1 and 1024, got {config.workers}")
    if not 1 <= config.shard_models <= 1_000_000:
        raise ConfigError(f"{where}: shard_models must be between 1 and 1000000, got {config.shard_models}")
    if config.nu is not None and not 0 < config.nu <= 1:
        raise ConfigError(f"{where}: nu must be in (0, 1], got {config.nu}")
    if config.alarm_rate is not None and not 0 < config.alarm_rate < 0.5:
        raise ConfigError(f"{where}: alarm_rate must be in (0, 0.5), got {config.alarm_rate}")
    return config
