"""Secrets never reach logs: every line written to a run or task log passes through :func:`redact`.

A secret is the value of any environment variable whose name says it holds one (``FLEETSCORE_TOKEN``,
``AWS_SECRET_ACCESS_KEY``, ``AZURE_STORAGE_CONNECTION_STRING``, ``PGPASSWORD``, ... : names with
TOKEN, SECRET, PASSWORD, KEY, CONNECTION_STRING, CREDENTIAL or SAS), the password part of a URL
(``postgresql://user:pw@host/db``), ``key=value`` pairs such as ``AccountKey=...`` in connection
strings, and ``Bearer`` tokens. Over-redacting is fine; leaking is not.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***"
#: Environment variable names whose values are secrets.
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW(?:OR)?D|KEY|CONNECTION_STRING|CREDENTIAL|SAS", re.IGNORECASE)
#: Shorter values would redact ordinary words.
_MIN_SECRET_LEN = 4
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)([^@\s]+)(@)")
_PAIR = re.compile(
    r"\b(AccountKey|SharedAccessSignature|SharedAccessKey|SharedAccessKeyName|password|passwd|pwd|sig|token|"
    r"secret|api[_-]?key|access[_-]?key)(\s*[=:]\s*)([^;&\s,'\"]+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"\b(Bearer\s+)[A-Za-z0-9._~+/=-]+")


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """Secrets found in the environment, longest first: values of secret-named variables, the key parts
    of connection strings among them, and passwords of URLs in any variable."""
    env = os.environ if env is None else env
    values: set[str] = set()
    for name, value in env.items():
        values.update(m.group(2) for m in _URL_PASSWORD.finditer(value))
        if _SECRET_NAME.search(name):
            values.add(value)
            values.update(m.group(3) for m in _PAIR.finditer(value))
    return sorted((v for v in values if len(v) >= _MIN_SECRET_LEN), key=len, reverse=True)


def redact(text: str, secrets: list[str] | None = None) -> str:
    """``text`` with every secret replaced by ``***`` (``secrets``: from :func:`secret_values` if not given)."""
    for value in secret_values() if secrets is None else secrets:
        if value in text:
            text = text.replace(value, REDACTED)
    text = _URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + m.group(3), text)
    text = _PAIR.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    return _BEARER.sub(lambda m: m.group(1) + REDACTED, text)


def redact_fields(value: Any, secrets: list[str] | None = None) -> Any:
    """Redact every string inside a JSON-like value (dicts, lists, scalars)."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {k: redact_fields(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_fields(v, secrets) for v in value]
    return value
