"""Secrets never reach logs in storage: env values, URL passwords, connection-string keys, tokens."""

from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
from sched_support import set_schedule_settings, shard_path

from fleetscore.exec.capture import run_captured
from fleetscore.redact import redact, secret_values
from fleetscore.storage.fs import open_storage
from fleetscore.storage.logs import LogStore

TOKEN = "tok-9f8e7d6c5b4a"
AWS_SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYzz"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlm=="
CONN = f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={ACCOUNT_KEY};BlobEndpoint=http://127.0.0.1:1/x;"
SECRETS = (TOKEN, AWS_SECRET, ACCOUNT_KEY, "hunter2-pw")


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETSCORE_TOKEN", TOKEN)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", CONN)


def test_redact_finds_every_kind_of_secret(secret_env) -> None:  # type: ignore[no-untyped-def]
    text = (f"token {TOKEN} key={AWS_SECRET} conn {CONN} url postgresql+psycopg://fleet:hunter2-pw@db:5432/x "
            f"Authorization: Bearer abc.def.ghi sas https://a.blob/x?sv=1&sig=Zm9vYmFy&se=2")
    out = redact(text)
    for secret in (*SECRETS, "abc.def.ghi", "Zm9vYmFy"):
        assert secret not in out
    assert "postgresql+psycopg://fleet:***@db:5432/x" in out
    other = redact("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0a2V5;EndpointSuffix=x")
    assert "c2VjcmV0a2V5" not in other and "AccountName=acct" in other and "AccountKey=***" in other
    assert TOKEN in secret_values() and "1" not in secret_values({"X_TOKEN": "1"})
    assert redact("nothing to hide, /data/fleet") == "nothing to hide, /data/fleet"


@dataclass(frozen=True)
class Spec:
    storage_url: str
    run_id: str = "0123456789abcdef"
    task: int = 7
    attempt: int = 1


def noisy(spec: Spec) -> str:
    print(f"stdout says {TOKEN}")
    print(f"stderr says {AWS_SECRET}", file=sys.stderr)
    logging.getLogger("fleetscore.test").warning("connecting with %s", CONN)
    warnings.warn(f"deprecated key {ACCOUNT_KEY}", DeprecationWarning, stacklevel=1)
    if spec.attempt > 1:
        raise RuntimeError(f"cannot reach postgresql://fleet:hunter2-pw@db/x with {TOKEN}")
    return "done"


def all_log_text(root: Path) -> str:
    return "".join(p.read_text() for p in root.rglob("*") if p.is_file())


def test_task_output_is_captured_and_redacted(secret_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    open_storage(str(tmp_path))  # as a run's driver does first: tasks then find its root (and marker)
    spec = Spec(str(tmp_path))
    assert run_captured(noisy, spec) == "done"
    with pytest.raises(RuntimeError, match="cannot reach"):
        run_captured(noisy, Spec(str(tmp_path), attempt=2))
    (first, second) = LogStore(open_storage(str(tmp_path))).task_attempts(spec.run_id, spec.task)
    assert "stdout says ***" in first.stdout and "stderr says ***" in first.stderr
    events = [(line["event"], line["level"]) for line in first.lines]
    assert events == [("task.start", "info"), ("log", "warning"), ("warning", "warning"), ("task.end", "info")]
    assert second.lines[-1]["event"] == "task.error" and "Traceback" in second.lines[-1]["traceback"]
    text = all_log_text(tmp_path / "logs")
    assert not [s for s in SECRETS if s in text] and "***" in text


def test_run_and_task_logs_of_a_failing_run_hold_no_secrets(home7, secret_env, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # the storage path itself carries a secret value: it is logged (run.start) and must come out redacted
    from fleetscore.api import Fleet

    set_schedule_settings(home7, retries=1, retry_backoff=0.05)
    shard_path(home7, 1).write_bytes(b"broken")  # shard 1 fails: errors and tracebacks are logged
    storage = tmp_path / f"vault-{AWS_SECRET}"
    (home7 / "data").rename(storage)
    monkeypatch.setenv("FLEETSCORE_STORAGE_URL", str(storage))
    fleet = Fleet.open(home7)
    run = fleet.score("2026-01-01T06:00:00Z", "2026-01-01T07:00:00Z")
    fleet.close()
    assert run.status.value == "partial"
    text = all_log_text(storage / "logs")
    assert "task.end" in text and "shard-00001.npz" in text
    assert not [s for s in SECRETS if s in text]
    assert "vault-***" in text
