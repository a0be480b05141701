"""One exception tree for fleetscore.

    FleetscoreError
    ├── InputError          bad user input: args, files, config, ids (CLI exit 2)
    │   ├── ConfigError     fleetscore.toml / FLEETSCORE_* values
    │   └── NotFoundError   unknown run, version, model, device
    ├── ModelFormatError    a model file or pickle that cannot be read or converted (CLI exit 2)
    └── StorageError        the storage layer failed (CLI exit 1)

Library errors are mapped into this tree with ``raise ... from exc`` so callers can catch one type.
"""

from __future__ import annotations


class FleetscoreError(Exception):
    """Base of every error fleetscore raises on purpose."""

    exit_code = 1


class InputError(FleetscoreError):
    """Input from the user (argument, file, id, time, config) is wrong; the message says where."""

    exit_code = 2


class ConfigError(InputError):
    """A configuration value (toml, env or flag) is invalid."""


class NotFoundError(InputError):
    """A named object (run, model version, model) does not exist."""


class ModelFormatError(FleetscoreError):
    """A saved model or an imported pickle cannot be read, validated or converted."""

    exit_code = 2


class StorageError(FleetscoreError):
    """Reading or writing the storage backend failed."""
