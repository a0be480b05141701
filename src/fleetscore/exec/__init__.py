"""Executors run many tasks (each a shard of many models) in parallel: a local process pool or Ray."""

from fleetscore.exec.base import Executor, TaskError
from fleetscore.exec.factory import make_executor

__all__ = ["Executor", "TaskError", "make_executor"]
