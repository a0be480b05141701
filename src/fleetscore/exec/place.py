"""Where a task runs and which attempt it is: executors set it, task functions put it in their records.

The local executor sets nothing: a task then runs on this host, first attempt. The Ray executor sets
the Ray node and the attempt number (a task retried after its worker died runs again as attempt 2).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


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
