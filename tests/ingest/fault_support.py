"""Failures injected into the ingest log's ``open``/``write``/``fsync`` calls: in-process (a test
sets :attr:`FaultyOs.faults`) or in a real server process (a control file, see :func:`install`)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

#: A write that writes only half of the frame and returns the short count (a filling disk).
SHORT = "short"


class FaultyOs:
    """Stands in for ``os`` inside :mod:`fleetscore.ingest.log`: each call named in the faults
    (``open``, ``write``, ``fsync`` → an errno name such as ``EMFILE``, or ``short`` for a write)
    fails until the fault is removed; every other attribute is the real ``os``."""

    def __init__(self, control: Path | None = None) -> None:
        self.control = control
        self.faults: dict[str, str] = {}
        self.injected = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def _active(self, call: str) -> str | None:
        if self.control is None:
            return self.faults.get(call)
        try:
            return json.loads(self.control.read_text()).get(call)
        except FileNotFoundError:
            return None

    def _check(self, call: str) -> None:
        name = self._active(call)
        if name is not None and name != SHORT:
            self.injected += 1
            code = getattr(errno, name)
            raise OSError(code, os.strerror(code))

    def open(self, path: Any, flags: int, mode: int = 0o777) -> int:
        self._check("open")
        return os.open(path, flags, mode)

    def write(self, fd: int, data: bytes) -> int:
        if self._active("write") == SHORT:
            self.injected += 1
            return os.write(fd, data[: len(data) // 2])
        self._check("write")
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        self._check("fsync")
        os.fsync(fd)


def set_faults(control: Path, **faults: str) -> None:
    """Replace the faults a server started with :func:`install` injects (none: every call works again)."""
    tmp = control.with_suffix(".tmp")
    tmp.write_text(json.dumps(faults))
    os.replace(tmp, control)


def install(control: str) -> None:
    """In a server process, before it starts: inject the faults named in the JSON file ``control``."""
    import fleetscore.ingest.log as log

    log.os = FaultyOs(Path(control))  # type: ignore[assignment]
