"""Cloud credentials: read from the environment only, and forwarded to cluster workers that lack them.

Storage backends (s3fs/boto, adlfs/azure) read their credentials from the variables in
:data:`CREDENTIAL_ENV`; :func:`credential_env` picks the ones set, so an executor can hand them to its
workers with each task (:func:`call_with_credentials`): a process pool's long-lived fork server has
the environment of when it started, and the Ray executor passes them through the object store, never
through ``runtime_env``, which Ray writes in plain text to its logs. Secret values are kept out of
messages by :mod:`fleetscore.redact`.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, TypeVar

T = TypeVar("T")

#: Variables the storage backends read; forwarded to workers as they are in the driver's environment.
CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CLIENT_ID",
    "AZURE_STORAGE_CLIENT_SECRET",
    "AZURE_STORAGE_TENANT_ID",
)


def credential_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The credential variables set (non-empty) in ``env`` (default: this process's environment)."""
    env = os.environ if env is None else env
    return {name: env[name] for name in CREDENTIAL_ENV if env.get(name)}


def storage_options(url: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """fsspec options the environment's credentials imply for ``url``: an S3 endpoint (moto, MinIO) or an
    Azure connection string (Azurite); the backends read the other variables themselves."""
    env = os.environ if env is None else env
    options: dict[str, Any] = {}
    if url.startswith(("s3://", "s3a://")) and env.get("AWS_ENDPOINT_URL"):
        options["client_kwargs"] = {"endpoint_url": env["AWS_ENDPOINT_URL"]}
    if url.startswith(("az://", "abfs://")) and env.get("AZURE_STORAGE_CONNECTION_STRING"):
        options["connection_string"] = env["AZURE_STORAGE_CONNECTION_STRING"]
    return options


def call_with_credentials(env: Mapping[str, str], fn: Callable[[Any], T], spec: Any) -> T:
    """In a worker: take the driver's credential variables ``env``, then run ``fn(spec)``."""
    os.environ.update(env)
    return fn(spec)
