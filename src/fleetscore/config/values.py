"""Parsers of setting values, shared by every section: toml values, environment text and flags.

Each takes the value and ``where`` (file and key, variable or flag) and raises a ConfigError that
names it, so a bad value says where it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fleetscore.core.times import parse_duration
from fleetscore.errors import ConfigError, InputError

Parser = Callable[[Any, str], Any]


def text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected text, got {value!r}")
    return value


#: Environment text read as a yes/no setting.
_TRUTH = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def boolean(value: Any, where: str) -> bool:
    """A toml boolean, or its text in the environment (true/false, 1/0, yes/no, on/off)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUTH:
        return _TRUTH[value.strip().lower()]
    raise ConfigError(f"{where}: expected true or false, got {value!r}")


def whole(value: Any, where: str) -> int:
    """A whole number: a toml integer, or its text (as in the environment); booleans are refused."""
    try:
        if isinstance(value, (bool, float)):
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a number, got {value!r}") from None


def number(value: Any, where: str) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a number, got {value!r}") from None


def strict_whole(value: Any, where: str) -> int:
    """A toml integer only (not its text, not a float)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: must be a whole number, got {value!r}")
    return value


def positive_whole(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: expected a positive whole number, got {value!r}")
    return value


def seconds(value: Any, where: str) -> float:
    """A duration given as a number of seconds or as text like ``30s``, ``5m``, ``1h``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where}: expected a duration like '30s' or a number of seconds, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(parse_duration(value))
    except InputError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def whole_seconds(*, allow_zero: bool) -> Parser:
    """A parser of durations in whole seconds (``"5m"`` or ``300``); ``allow_zero``: 0 / "0s" mean off."""

    def parse(value: Any, where: str) -> int:
        if allow_zero and value in (0, "0", "0s"):
            return 0
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        try:
            return parse_duration(value)
        except InputError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    return parse


def parse_section(body: Mapping[str, Any], keys: Mapping[str, tuple[str, Parser]], where: str) -> dict[str, Any]:
    """Field values of one toml section: ``keys`` maps each toml key to (field, parser); others are errors."""
    unknown = sorted(set(body) - set(keys))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(keys)})")
    return {field: parse(body[key], f"{where} {key}") for key, (field, parse) in keys.items() if key in body}


def check_range(where: str, name: str, value: float, low: float, high: float, unit: str = "") -> None:
    """ConfigError unless ``low <= value <= high``."""
    if not low <= value <= high:
        raise ConfigError(f"{where}: {name} must be between {low:g}{unit} and {high:g}{unit}, got {value:g}")
