"""Where a task runs and which attempt it is: executors set it, task functions put it in their records.

The local executor sets nothing: a task then runs on this host, first attempt. The Ray executor sets
the Ray node and the attempt number (a task retried after its worker died runs again as attempt 2).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fleetscore.errors import ConfigError

if TYPE_CHECKING:
    from fleetscore.exec.base import Executor
    from fleetscore.storage.fs import Storage


@dataclass(frozen=True)
class TaskPlace:
    """The node (machine or cluster node) and worker process running a task, and its attempt (1 = first)."""

    node: str
    worker: str
    attempt: int = 1


_PLACE: ContextVar[TaskPlace | None] = ContextVar("fleetscore_task_place", default=None)


def this_process(node: str | None = None, attempt: int = 1) -> TaskPlace:
    """This process as a place: ``host:pid`` on ``node`` (default: the host name)."""
    host = socket.gethostname()
    return TaskPlace(node or host, f"{host}:{os.getpid()}", attempt)


def current_place() -> TaskPlace:
    """The place the running executor set, else this process on this host, first attempt."""
    return _PLACE.get() or this_process()


@contextmanager
def placed(place: TaskPlace) -> Iterator[TaskPlace]:
    """Run the body (a task) at ``place``: :func:`current_place` returns it inside."""
    token = _PLACE.set(place)
    try:
        yield place
    finally:
        _PLACE.reset(token)


def is_this_host(host: str) -> bool:
    """True when ``host`` (a name or an address) is this machine: a loopback address, or one this host can bind."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False  # a name this host cannot resolve is not this host
    for family, _, _, _, sockaddr in infos:
        address = str(sockaddr[0])
        if ipaddress.ip_address(address.split("%")[0]).is_loopback:
            continue
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((address, 0))  # only an address assigned to one of this host's interfaces binds
            except OSError:
                return False
    return bool(infos)


def other_hosts(hosts: Iterable[str]) -> list[str]:
    """Those of ``hosts`` that are not this machine, sorted and once each."""
    return sorted({h for h in hosts if h and not is_this_host(h)})


def check_storage_reach(storage: Storage, shared: bool, executor: Executor) -> None:
    """Refuse, before a run starts, local storage that workers on other hosts would not see (each would
    read and write its own disk), unless ``[storage] shared`` declares the path mounted on every node."""
    if not storage.local or shared:
        return
    hosts = executor.other_hosts()
    if hosts:
        shown = ", ".join(hosts[:3]) + (f" and {len(hosts) - 3} more" if len(hosts) > 3 else "")
        raise ConfigError(
            f"storage {storage.url} is a local path, but the {executor.name} executor runs tasks on other hosts "
            f"({shown}) that would not see it: use object storage (s3://bucket/prefix, az://container/prefix) "
            "or, if every node mounts this same path (e.g. NFS), set [storage] shared = true "
            "(FLEETSCORE_STORAGE_SHARED=true)")
