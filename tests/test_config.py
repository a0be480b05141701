"""Configuration: defaults < fleetscore.toml < FLEETSCORE_* env < flags; bad values say where."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetscore.config import load_config
from fleetscore.errors import ConfigError


def test_defaults_live_under_the_home(tmp_path: Path) -> None:
    cfg = load_config(tmp_path / "h", env={})
    assert cfg.storage.url == str(tmp_path / "h" / "data")
    assert cfg.catalog.url == f"sqlite:///{tmp_path / 'h' / 'catalog.db'}"
    assert cfg.executor.kind == "local" and cfg.executor.workers >= 1


def test_home_from_env(tmp_path: Path) -> None:
    assert load_config(env={"FLEETSCORE_HOME": str(tmp_path / "e")}).home == tmp_path / "e"


def test_toml_then_env_then_flags(tmp_path: Path) -> None:
    (tmp_path / "fleetscore.toml").write_text('[executor]\nworkers = 3\n[train]\nnu = 0.2\n[storage]\nurl = "/tmp/x"\n')
    cfg = load_config(tmp_path, env={})
    assert (cfg.executor.workers, cfg.train.nu, cfg.storage.url) == (3, 0.2, "/tmp/x")
    cfg = load_config(tmp_path, env={"FLEETSCORE_WORKERS": "5"})
    assert cfg.executor.workers == 5
    assert cfg.with_overrides(workers=7, nu=None).executor.workers == 7


@pytest.mark.parametrize("text,needle", [
    ("[executor\nworkers=1", "not valid TOML"),
    ("[executor]\nworkers = 'many'\n", "expected a number"),
    ("[executor]\nkind = 'spark'\n", "executor must be one of"),
    ("[executor]\nworkers = 0\n", "workers must be"),
    ("[storage]\npassword = 'x'\n", "unknown key 'storage.password'"),
    ("[train]\nnu = 3\n", "nu must be"),
])
def test_bad_toml_names_file_and_key(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "fleetscore.toml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path, env={})
    assert needle in str(err.value)


def test_bad_env_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="FLEETSCORE_WORKERS"):
        load_config(tmp_path, env={"FLEETSCORE_WORKERS": "lots"})


def test_home_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        load_config(tmp_path / "f", env={})
