"""Settings of alerting: the ``[alerts]`` section of fleetscore.toml, its rules and its receivers.

    [alerts]
    deliver_wait = "10s"       # a one-shot `score` delivers what it queued for at most this long
    poll = "5s"                # `serve` and `scheduler` look for due notifications this often
    lease = "60s"              # a claimed batch is another process's to retry after this long
    external_url = "http://127.0.0.1:8000"   # the dashboard, for links (Alertmanager generatorURL)

    [[alerts.rules]]
    name = "pumps"
    device = ["pump-*"]        # fnmatch patterns (text or list), default "*"
    sensor = "*"
    min_severity = 70          # peak severity in [0, 100]
    min_duration = "10m"       # first to last flag at least this long
    min_flags = 3              # flags on matching sensors ...
    trigger_window = "15m"     # ... at a rate of at least min_flags per trigger_window
    recovery_window = "30m"    # resolved once no flag came for this long (or when the incident resolves)
    receivers = ["ops-hook", "am"]

    [[alerts.receivers]]
    name = "ops-hook"
    type = "webhook"           # or "alertmanager" (url = its base, e.g. http://am:9093)
    url = "https://hooks.example/fleetscore"   # or url_env = "FLEETSCORE_..." when the URL itself is a secret
    timeout = "5s"
    max_attempts = 8           # then the notification becomes a dead letter
    backoff = "2s"             # wait before the 2nd attempt, doubled for each next one ...
    max_backoff = "10m"        # ... up to this
    token_env = "FLEETSCORE_ALERTS_OPS_TOKEN"       # bearer token: the NAME of an environment variable
    username = "fleetscore"                         # basic auth, with the password from password_env
    password_env = "FLEETSCORE_ALERTS_OPS_PASSWORD"

Secrets are never read from the toml: ``token_env`` / ``password_env`` (and ``url_env``, for webhook
URLs that carry a secret) name environment variables
(which must start with ``FLEETSCORE_``), read by :func:`fleetscore.config.load.load_config`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from fleetscore.config.values import Parser, check_range, number, parse_section, positive_whole, seconds, text
from fleetscore.errors import ConfigError

WEBHOOK, ALERTMANAGER = "webhook", "alertmanager"
RECEIVER_TYPES = (WEBHOOK, ALERTMANAGER)
DEFAULT_DELIVER_WAIT_S = 10.0
DEFAULT_POLL_S = 5.0
DEFAULT_LEASE_S = 60.0
DEFAULT_EXTERNAL_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MAX_ATTEMPTS = 8
DEFAULT_BACKOFF_S = 2.0
DEFAULT_MAX_BACKOFF_S = 600.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ENV_NAME = re.compile(r"^FLEETSCORE_[A-Z0-9_]{1,100}$")
_SECRET_KEYS = ("token", "password", "secret", "bearer", "authorization")


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ConfigError(f"{where}: expected a name of letters, digits, '_', '.', '-' (at most 64), got {value!r}")
    return value


def _patterns(value: Any, where: str) -> tuple[str, ...]:
    """fnmatch patterns: one text or a non-empty list of texts."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(p, str) and p for p in items):
        raise ConfigError(f"{where}: expected a pattern like 'pump-*' or a list of them, got {value!r}")
    return tuple(items)


def _names(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: expected a list of receiver names, got {value!r}")
    names = tuple(_name(v, where) for v in value)
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: a receiver is named twice in {list(names)}")
    return names


def _env_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _ENV_NAME.match(value):
        raise ConfigError(f"{where}: expected the name of an environment variable starting with FLEETSCORE_ "
                          f"(upper case, digits, '_'), got {value!r}")
    return value


def _url(value: Any, where: str) -> str:
    url = text(value, where)
    if not re.match(r"^https?://[^\s/]+", url):
        raise ConfigError(f"{where}: expected an http:// or https:// URL, got {url[:200]!r}")
    return url.rstrip("/")


def _duration(value: Any, where: str) -> float:
    found = seconds(value, where)
    if not 0 <= found <= 366 * 86_400:
        raise ConfigError(f"{where}: must be between 0 seconds and 366 days, got {value!r}")
    return found


@dataclass(frozen=True, kw_only=True)
class Rule:
    """One ``[[alerts.rules]]`` table: which incidents notify which receivers, and when they recover."""

    name: str
    devices: tuple[str, ...] = ("*",)
    sensors: tuple[str, ...] = ("*",)
    min_severity: float = 0.0
    min_duration_s: float = 0.0
    min_flags: int = 1
    trigger_window_s: float | None = None
    recovery_window_s: float | None = None
    receivers: tuple[str, ...] = ()

    KEYS: ClassVar[dict[str, tuple[str, Parser]]] = {
        "name": ("name", _name), "device": ("devices", _patterns), "sensor": ("sensors", _patterns),
        "min_severity": ("min_severity", number), "min_duration": ("min_duration_s", _duration),
        "min_flags": ("min_flags", positive_whole), "trigger_window": ("trigger_window_s", _duration),
        "recovery_window": ("recovery_window_s", _duration), "receivers": ("receivers", _names)}
    REQUIRED: ClassVar[tuple[str, ...]] = ("name", "receivers")

    def checked(self, where: str) -> Rule:
        check_range(where, "min_severity", self.min_severity, 0, 100)
        if self.trigger_window_s is not None and self.trigger_window_s <= 0:
            raise ConfigError(f"{where}: trigger_window must be longer than 0 seconds")
        return self

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "device": list(self.devices), "sensor": list(self.sensors),
                "min_severity": self.min_severity, "min_duration_s": self.min_duration_s, "min_flags": self.min_flags,
                "trigger_window_s": self.trigger_window_s, "recovery_window_s": self.recovery_window_s,
                "receivers": list(self.receivers)}


@dataclass(frozen=True, kw_only=True)
class Receiver:
    """One ``[[alerts.receivers]]`` table: where notifications go, how patiently, with which credentials.

    ``token`` / ``password`` are the secrets read from the variables ``token_env`` / ``password_env``
    name (None while unset); they never appear in :meth:`as_dict`, logs or dead letters.
    """

    name: str
    type: str
    url: str = ""
    url_env: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_s: float = DEFAULT_BACKOFF_S
    max_backoff_s: float = DEFAULT_MAX_BACKOFF_S
    token_env: str | None = None
    username: str | None = None
    password_env: str | None = None
    token: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    secret_url: str | None = field(default=None, repr=False)

    KEYS: ClassVar[dict[str, tuple[str, Parser]]] = {
        "name": ("name", _name), "type": ("type", text), "url": ("url", _url), "url_env": ("url_env", _env_name),
        "timeout": ("timeout_s", _duration),
        "max_attempts": ("max_attempts", positive_whole), "backoff": ("backoff_s", _duration),
        "max_backoff": ("max_backoff_s", _duration), "token_env": ("token_env", _env_name),
        "username": ("username", text), "password_env": ("password_env", _env_name)}
    REQUIRED: ClassVar[tuple[str, ...]] = ("name", "type")

    @property
    def secrets(self) -> list[str]:
        """This receiver's secret values (for redaction)."""
        return [s for s in (self.token, self.password, self.secret_url) if s]

    @property
    def target(self) -> str:
        """Where notifications go: ``url``, or the value of ``url_env``."""
        return (self.secret_url or "").rstrip("/") if self.url_env else self.url

    def with_secrets(self, env: Mapping[str, str]) -> Receiver:
        """A copy with the secrets read from the variables it names."""
        return replace(self, token=env.get(self.token_env) if self.token_env else None,
                       password=env.get(self.password_env) if self.password_env else None,
                       secret_url=env.get(self.url_env) if self.url_env else None)

    def missing_secret(self) -> str | None:
        """The name of a variable this receiver needs that is not set, or None."""
        if self.url_env and not self.secret_url:
            return self.url_env
        if self.token_env and not self.token:
            return self.token_env
        if self.password_env and not self.password:
            return self.password_env
        return None

    def checked(self, where: str) -> Receiver:
        if self.type not in RECEIVER_TYPES:
            raise ConfigError(f"{where}: type must be one of {', '.join(RECEIVER_TYPES)}, got {self.type!r}")
        if bool(self.url) == bool(self.url_env):
            raise ConfigError(f"{where}: give url, or url_env naming a variable that holds the URL (one of them)")
        check_range(where, "timeout", self.timeout_s, 0.1, 300, "s")
        check_range(where, "max_attempts", self.max_attempts, 1, 100)
        if self.password_env and not self.username:
            raise ConfigError(f"{where}: password_env needs a username (basic auth)")
        if self.password_env and self.token_env:
            raise ConfigError(f"{where}: give token_env (bearer) or username/password_env (basic), not both")
        return self

    def as_dict(self) -> dict[str, Any]:
        auth = "bearer" if self.token_env else "basic" if self.username else None
        return {"name": self.name, "type": self.type, "url": self.url or f"(from {self.url_env})",
                "url_env": self.url_env, "timeout_s": self.timeout_s,
                "max_attempts": self.max_attempts, "backoff_s": self.backoff_s, "max_backoff_s": self.max_backoff_s,
                "auth": auth, "token_env": self.token_env, "username": self.username, "password_env": self.password_env,
                "secret_set": self.missing_secret() is None}


def _tables(cls: Any, what: str) -> Parser:
    """A parser of an array of tables (``[[alerts.rules]]``) into ``cls`` values, each checked key by key."""

    def parse(value: Any, where: str) -> tuple[Any, ...]:
        base = where.rsplit(" ", 1)[0].removesuffix(" [alerts]")  # the file
        if not isinstance(value, list):
            raise ConfigError(f"{base}: {what} must be an array of tables ([[alerts.{what}]]), got {value!r}")
        out = []
        seen: set[str] = set()
        for i, body in enumerate(value, 1):
            label = f"{base} [[alerts.{what}]] #{i}"
            if not isinstance(body, dict):
                raise ConfigError(f"{label}: expected a table, got {body!r}")
            if isinstance(body.get("name"), str):
                label += f" ({body['name'][:64]!r})"
            secret = next((k for k in body if k.lower() in _SECRET_KEYS), None)
            if secret is not None:
                raise ConfigError(f"{label}: key {secret!r} would put a secret in fleetscore.toml; set it in an "
                                  f"environment variable and name it with token_env (or username and password_env)")
            values = parse_section(body, cls.KEYS, label)
            missing = [k for k in cls.REQUIRED if cls.KEYS[k][0] not in values]
            if missing:
                raise ConfigError(f"{label}: missing key {missing[0]!r}")
            if values["name"] in seen:
                raise ConfigError(f"{label}: {what[:-1]} name {values['name']!r} is used twice")
            seen.add(values["name"])
            out.append(cls(**values).checked(label))
        return tuple(out)

    return parse


@dataclass(frozen=True, kw_only=True)
class AlertSettings:
    """Resolved ``[alerts]`` settings (``Config.alerts``): rules, receivers and delivery timing."""

    rules: tuple[Rule, ...] = ()
    receivers: tuple[Receiver, ...] = ()
    deliver_wait_s: float = DEFAULT_DELIVER_WAIT_S
    poll_s: float = DEFAULT_POLL_S
    lease_s: float = DEFAULT_LEASE_S
    external_url: str = DEFAULT_EXTERNAL_URL

    KEYS: ClassVar[dict[str, tuple[str, Parser]]] = {
        "rules": ("rules", _tables(Rule, "rules")), "receivers": ("receivers", _tables(Receiver, "receivers")),
        "deliver_wait": ("deliver_wait_s", _duration), "poll": ("poll_s", _duration), "lease": ("lease_s", _duration),
        "external_url": ("external_url", _url)}

    def rule(self, name: str) -> Rule:
        from fleetscore.errors import NotFoundError

        for rule in self.rules:
            if rule.name == name:
                return rule
        known = ", ".join(r.name for r in self.rules) or "none: add [[alerts.rules]] to fleetscore.toml"
        raise NotFoundError(f"unknown alert rule {name[:64]!r} (known: {known})")

    def receiver(self, name: str) -> Receiver:
        """The receiver called ``name`` (every rule's receivers exist: :meth:`checked`)."""
        return next(r for r in self.receivers if r.name == name)

    def with_secrets(self, env: Mapping[str, str]) -> AlertSettings:
        return replace(self, receivers=tuple(r.with_secrets(env) for r in self.receivers))

    @property
    def secrets(self) -> list[str]:
        return [s for r in self.receivers for s in r.secrets]

    def checked(self, where: str) -> AlertSettings:
        names = {r.name for r in self.receivers}
        for rule in self.rules:
            unknown = [n for n in rule.receivers if n not in names]
            if unknown:
                raise ConfigError(f"{where}: alert rule {rule.name!r} names unknown receiver {unknown[0]!r} "
                                  f"(known: {', '.join(sorted(names)) or 'none'})")
        check_range(where, "alerts.deliver_wait", self.deliver_wait_s, 0, 3600, "s")
        check_range(where, "alerts.poll", self.poll_s, 0.05, 3600, "s")
        check_range(where, "alerts.lease", self.lease_s, 1, 86_400, "s")
        return self
