"""The merged settings of a home (:class:`Config`) and the only reader of fleetscore.toml and the environment.

Order: defaults < ``fleetscore.toml`` in the home < ``FLEETSCORE_*`` environment < flags
(:meth:`Config.with_overrides`). Every section and key of the toml must be known; secrets (the web
token, cloud credentials) are never read from it, only from the environment.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fleetscore.config.alerts import AlertSettings
from fleetscore.config.incidents import IncidentSettings
from fleetscore.config.ingest import IngestSettings
from fleetscore.config.schedule import ScheduleSettings, failure_limit
from fleetscore.config.sections import (
    CatalogSettings,
    ExecutorSettings,
    StorageSettings,
    TrainSettings,
    WebSettings,
    kernel_choice,
)
from fleetscore.config.server import ServerSettings
from fleetscore.config.streams import KafkaSettings, MqttSettings, NatsSettings
from fleetscore.config.values import Parser, boolean, parse_section, text, whole, whole_seconds
from fleetscore.errors import ConfigError

DEFAULT_HOME = "./fleetscore-home"
CONFIG_FILE = "fleetscore.toml"

Section = (StorageSettings | CatalogSettings | ExecutorSettings | TrainSettings | ScheduleSettings | IngestSettings
           | WebSettings | ServerSettings | KafkaSettings | NatsSettings | MqttSettings | AlertSettings
           | IncidentSettings)
#: toml section -> its settings class (the Config field of the same name)
SECTIONS: dict[str, type[Section]] = {
    "storage": StorageSettings, "catalog": CatalogSettings, "executor": ExecutorSettings, "train": TrainSettings,
    "schedule": ScheduleSettings, "ingest": IngestSettings, "web": WebSettings, "kafka": KafkaSettings,
    "nats": NatsSettings, "server": ServerSettings, "mqtt": MqttSettings, "alerts": AlertSettings,
    "incidents": IncidentSettings,
}
#: environment variable -> (section, field, parser)
ENV_KEYS: dict[str, tuple[str, str, Parser]] = {
    "FLEETSCORE_STORAGE_URL": ("storage", "url", text),
    "FLEETSCORE_STORAGE_SHARED": ("storage", "shared", boolean),
    "FLEETSCORE_CATALOG_URL": ("catalog", "url", text),
    "FLEETSCORE_EXECUTOR": ("executor", "kind", text),
    "FLEETSCORE_WORKERS": ("executor", "workers", whole),
    "FLEETSCORE_RAY_ADDRESS": ("executor", "ray_address", text),
    "RAY_ADDRESS": ("executor", "ray_env_address", text),
    "FLEETSCORE_SHARD_MODELS": ("executor", "shard_models", whole),
    "FLEETSCORE_KERNEL": ("executor", "kernel", kernel_choice),
    "FLEETSCORE_IN_PROCESS": ("executor", "in_process", text),
    "FLEETSCORE_TASK_TIMEOUT": ("executor", "task_timeout_s", whole_seconds(allow_zero=True)),
    "FLEETSCORE_MAX_FAILED_MODELS": ("schedule", "max_failed_models", failure_limit),
    "FLEETSCORE_TOKEN": ("web", "token", text),
    "FLEETSCORE_KAFKA_CONNECTION_STRING": ("kafka", "connection_string", text),
    "FLEETSCORE_KAFKA_USERNAME": ("kafka", "username", text),
    "FLEETSCORE_KAFKA_PASSWORD": ("kafka", "password", text),
    "FLEETSCORE_NATS_CREDS": ("nats", "creds", text),
    "FLEETSCORE_NATS_USER": ("nats", "user", text),
    "FLEETSCORE_NATS_PASSWORD": ("nats", "password", text),
    "FLEETSCORE_MQTT_USERNAME": ("mqtt", "username", text),
    "FLEETSCORE_MQTT_PASSWORD": ("mqtt", "password", text),
}
#: flag (keyword of `Config.with_overrides`, `Fleet.open`) -> (section, field)
FLAGS: dict[str, tuple[str, str]] = {
    "storage_url": ("storage", "url"), "catalog_url": ("catalog", "url"),
    "executor": ("executor", "kind"), "workers": ("executor", "workers"), "ray_address": ("executor", "ray_address"),
    "shard_models": ("executor", "shard_models"), "in_process": ("executor", "in_process"),
    "kind": ("train", "kind"), "features": ("train", "features"), "nu": ("train", "nu"), "gamma": ("train", "gamma"),
    "alarm_rate": ("train", "alarm_rate"), "max_failed_models": ("schedule", "max_failed_models"),
}


@dataclass(frozen=True, kw_only=True)
class Config:
    """Resolved settings of one home, one value object per toml section; build with :func:`load_config`."""

    home: Path
    storage: StorageSettings
    catalog: CatalogSettings
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    web: WebSettings = field(default_factory=WebSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    nats: NatsSettings = field(default_factory=NatsSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    incidents: IncidentSettings = field(default_factory=IncidentSettings)

    @property
    def file(self) -> Path:
        """The home's fleetscore.toml (it may not exist)."""
        return self.home / CONFIG_FILE

    def with_overrides(self, **overrides: Any) -> Config:
        """A copy with the given non-None flag values applied (names in `FLAGS`), checked."""
        unknown = sorted(set(overrides) - set(FLAGS))
        if unknown:
            raise ConfigError(f"unknown setting {unknown[0]!r} (known: {', '.join(FLAGS)})")
        changes: dict[str, dict[str, Any]] = {}
        for name, value in overrides.items():
            if value is not None:
                section, key = FLAGS[name]
                changes.setdefault(section, {})[key] = value
        return _checked(replace(self, **{s: replace(getattr(self, s), **v) for s, v in changes.items()}), "flags")


def load_config(home: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Resolve the settings for ``home`` (else $FLEETSCORE_HOME, else ./fleetscore-home)."""
    env = os.environ if env is None else env
    home_path = Path(home or env.get("FLEETSCORE_HOME") or DEFAULT_HOME).expanduser().absolute()
    if home_path.exists() and not home_path.is_dir():
        raise ConfigError(f"home {home_path} exists and is not a directory")
    toml_path = home_path / CONFIG_FILE
    values: dict[str, dict[str, Any]] = {
        "storage": {"url": str(home_path / "data")}, "catalog": {"url": f"sqlite:///{home_path / 'catalog.db'}"}}
    if toml_path.is_file():
        for section, body in _read_toml(toml_path).items():
            values.setdefault(section, {}).update(body)
    for name, (section, key, parse) in ENV_KEYS.items():
        if env.get(name):
            values.setdefault(section, {})[key] = parse(env[name], name)
    sections: dict[str, Any] = {s: SECTIONS[s](**v) for s, v in values.items()}
    config = Config(home=home_path, **sections)
    config = replace(config, alerts=config.alerts.with_secrets(env))  # receivers' secrets: environment only
    return _checked(config, str(toml_path) if toml_path.is_file() else "environment")


def _read_toml(path: Path) -> dict[str, dict[str, Any]]:
    """Field values per section of a fleetscore.toml; ConfigError names the file and the bad key."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    out: dict[str, dict[str, Any]] = {}
    for section, body in data.items():
        if section not in SECTIONS:
            raise ConfigError(f"{path}: unknown section '{section}' (known: {', '.join(SECTIONS)})")
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: '{section}' must be a [{section}] section, got {body!r}")
        keys = SECTIONS[section].KEYS
        unknown = sorted(set(body) - set(keys))
        if unknown:
            known = ", ".join(f"{section}.{k}" for k in keys) or "none: it takes no keys"
            raise ConfigError(f"{path}: unknown key '{section}.{unknown[0]}' (known: {known})")
        out[section] = parse_section(body, keys, f"{path} [{section}]")
    return out


def _checked(config: Config, where: str) -> Config:
    for name in SECTIONS:
        getattr(config, name).checked(where)
    return config
