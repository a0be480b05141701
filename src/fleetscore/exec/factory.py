"""Build the executor a home's settings name: the local process pool or Ray."""

from __future__ import annotations

from fleetscore.errors import ConfigError
from fleetscore.exec.base import Executor


def make_executor(kind: str, workers: int, ray_address: str | None = None, *, env_address: str | None = None,
                  preload: tuple[str, ...] = (), task_timeout_s: float = 0) -> Executor:
    """The executor named in the config (``local`` or ``ray``); ``preload``: modules local workers import first;
    ``task_timeout_s``: a task's time limit in a worker (`fleetscore.exec.deadline`)."""
    if kind == "local":
        from fleetscore.exec.local import LocalExecutor

        return LocalExecutor(workers, preload=preload, task_timeout_s=task_timeout_s)
    if kind == "ray":
        try:
            from fleetscore.exec.ray import RayExecutor
        except ImportError as exc:
            raise ConfigError(f"executor 'ray' needs the ray extra: pip install 'fleetscore[ray]' ({exc})") from exc
        return RayExecutor(workers, address=ray_address, env_address=env_address, task_timeout_s=task_timeout_s)
    raise ConfigError(f"unknown executor {kind!r}; use local or ray")
