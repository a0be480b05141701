"""The lock files pin every dependency pyproject.toml asks for, at a version it admits, with hashes.

A dependency added to pyproject.toml without running ``scripts/lock.sh`` fails here, not on a fresh
machine where the install would silently miss it.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
#: lock file -> the extras it holds (base.lock: none)
LOCKS = {"base.lock": (), "all.lock": ("all",), "test.lock": ("all", "test")}


def wanted(extras: tuple[str, ...]) -> list[Requirement]:
    """The requirements of the package with ``extras``, its own extras (``fleetscore[...]``) expanded."""
    out = [Requirement(r) for r in PROJECT["dependencies"]]
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in PROJECT["optional-dependencies"][extra]:
            req = Requirement(text)
            if canonicalize_name(req.name) == canonicalize_name(PROJECT["name"]):
                todo.extend(req.extras)
            else:
                out.append(req)
    return out


def pins(path: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, hashes) of every pinned entry of a lock file."""
    text = path.read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text)
    out = {}
    for entry in entries:
        found = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", entry)
        if found:
            out[canonicalize_name(found.group(1))] = (found.group(2), entry.count("--hash=sha256:"))
    return out


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_lock_pins_every_requirement_with_hashes(lock: str) -> None:
    pinned = pins(REPO / "requirements" / lock)
    assert pinned, lock
    for req in wanted(LOCKS[lock]):
        name = canonicalize_name(req.name)
        assert name in pinned, f"{lock} lacks {req.name}: run scripts/lock.sh"
        version, hashes = pinned[name]
        assert req.specifier.contains(version, prereleases=True), f"{lock} pins {req.name}=={version}, not {req.specifier}"
    assert all(hashes > 0 for _, hashes in pinned.values()), f"{lock}: every pin needs its hashes"


def test_install_commands_use_the_locks() -> None:
    test_sh = (REPO / "scripts" / "test.sh").read_text()
    assert "--require-hashes -r requirements/test.lock" in test_sh
    assert "--no-deps -e ." in test_sh
    assert "--require-hashes -r requirements/all.lock" in (REPO / "Dockerfile").read_text()
