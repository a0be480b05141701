"""The ``[server]`` section: connection timeouts, the connection cap and the decompressed-size cap."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetscore.config import load_config
from fleetscore.config.server import DEFAULT_MAX_DECOMPRESSED_BYTES, ServerSettings
from fleetscore.errors import ConfigError


def test_defaults_bound_every_connection(tmp_path: Path) -> None:
    server = load_config(tmp_path, env={}).server
    assert server == ServerSettings()
    assert server.max_decompressed_bytes == DEFAULT_MAX_DECOMPRESSED_BYTES == 256 << 20
    assert all(0 < t < 3600 for t in (server.header_timeout_s, server.body_timeout_s, server.idle_timeout_s,
                                      server.keep_alive_timeout_s))


def test_toml_values_as_durations_or_seconds(tmp_path: Path) -> None:
    (tmp_path / "fleetscore.toml").write_text(
        '[server]\nheader_timeout = "2m"\nbody_timeout = 90\nidle_timeout = 0.5\nkeep_alive_timeout = "1s"\n'
        "max_connections = 5\nmax_decompressed_bytes = 1048576\n")
    server = load_config(tmp_path, env={}).server
    assert (server.header_timeout_s, server.body_timeout_s, server.idle_timeout_s, server.keep_alive_timeout_s) == (
        120.0, 90.0, 0.5, 1.0)
    assert (server.max_connections, server.max_decompressed_bytes) == (5, 1 << 20)


@pytest.mark.parametrize("text,needle", [
    ("header_timeout = 0", "header_timeout must be between"),
    ("keep_alive_timeout = '0s'", "keep_alive_timeout"),
    ("body_timeout = -1", "body_timeout must be between"),
    ("idle_timeout = 'soon'", "idle_timeout"),
    ("max_connections = 0", "max_connections"),
    ("max_decompressed_bytes = 1.5", "max_decompressed_bytes"),
    ("read_timeout = 3", "unknown key 'server.read_timeout'"),
])
def test_bad_server_values_name_file_and_key(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "fleetscore.toml").write_text(f"[server]\n{text}\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path, env={})
    assert needle in str(err.value) and "fleetscore.toml" in str(err.value)
