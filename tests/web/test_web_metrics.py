"""/metrics: Prometheus text that agrees with the catalog, from a registry of the app's own."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleetscore.catalog.stats import DURATION_BUCKETS


def scrape(client) -> dict[str, list]:  # type: ignore[no-untyped-def]
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list], name: str, **labels: str) -> float:
    found = [s.value for s in samples[name] if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


def test_run_metrics_agree_with_the_catalog(client, web_fleet) -> None:  # type: ignore[no-untyped-def]
    runs = web_fleet.runs()
    m = scrape(client)
    for status in {r.status.value for r in runs}:
        assert value(m, "fleetscore_runs_total", status=status) == sum(r.status.value == status for r in runs)
    assert value(m, "fleetscore_rows_scored_total") == sum(r.rows for r in runs)
    assert value(m, "fleetscore_models_scored_total") == sum(r.models for r in runs)
    assert value(m, "fleetscore_anomalies_total") == sum(r.anomalies for r in runs)
    assert value(m, "fleetscore_failed_models_total") == sum(r.failed_models for r in runs)
    assert value(m, "fleetscore_run_duration_seconds_count") == len(runs)
    assert value(m, "fleetscore_run_duration_seconds_sum") == pytest.approx(sum(r.elapsed_s for r in runs))
    for bound in DURATION_BUCKETS:
        expected = sum(r.elapsed_s <= bound for r in runs)
        assert value(m, "fleetscore_run_duration_seconds_bucket", le=f"{bound:.1f}") == expected
    assert value(m, "fleetscore_run_duration_seconds_bucket", le="+Inf") == len(runs)
    last = max(r.finished_at for r in runs if r.status.value == "succeeded")
    expected_ts = last / 1e6
    assert value(m, "fleetscore_last_successful_run_timestamp_seconds") == pytest.approx(expected_ts, abs=1e-3)


def test_ingest_counters_are_exported(make_client) -> None:  # type: ignore[no-untyped-def]
    class Counters:
        def stats(self) -> dict:
            return {"running": True, "accepted_total": 120, "rejected_total": 3, "log_lag_bytes": 512,
                    "last_compaction_error": None, "weird key!": 1.5}

    client = make_client()
    client.app.state.ingest = Counters()
    m = scrape(client)
    assert value(m, "fleetscore_ingest_accepted_total") == 120
    assert value(m, "fleetscore_ingest_rejected_total") == 3
    assert value(m, "fleetscore_ingest_log_lag_bytes") == 512
    assert value(m, "fleetscore_ingest_weird_key") == 1.5
    assert "fleetscore_ingest_running" not in m and "fleetscore_ingest_last_compaction_error" not in m


def test_each_app_has_its_own_registry(make_client) -> None:  # type: ignore[no-untyped-def]
    from prometheus_client import REGISTRY

    a, b = make_client(), make_client()
    assert a.app.state.metrics_registry is not b.app.state.metrics_registry
    assert "fleetscore_runs_total" in scrape(a) and "fleetscore_runs_total" in scrape(b)
    assert REGISTRY.get_sample_value("fleetscore_rows_scored_total") is None


def test_metrics_and_views_follow_runs_made_after_the_app_started(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from fastapi.testclient import TestClient
    from web_support import T0

    from fleetscore.api import Fleet
    from fleetscore.core.simulate import simulate_fleet
    from fleetscore.web.app import create_app

    fleet = Fleet.open(tmp_path / "home", workers=1)
    fleet.import_table(simulate_fleet(2, 1, T0, 4, 60.0, 0.02, 5).select(["ts", "device", "sensor", "value"]))
    fleet.train(T0, T0 + timedelta(hours=2), workers=1)
    window = {"end": (T0 + timedelta(hours=4)).isoformat()}
    with TestClient(create_app(fleet, ingest=False)) as client:
        assert not scrape(client).get("fleetscore_runs_total")
        assert client.get("/api/overview", params=window).json()["rows"] == 0
        runs = [fleet.score(T0 + timedelta(hours=h), T0 + timedelta(hours=h + 1), workers=1) for h in (2, 3)]
        m = scrape(client)
        assert value(m, "fleetscore_runs_total", status="succeeded") == 2
        assert value(m, "fleetscore_rows_scored_total") == sum(r.rows for r in runs) > 0
        assert client.get("/api/overview", params=window).json()["rows"] == sum(r.rows for r in runs)
    fleet.close()


def test_stream_consumer_lag_is_exported_and_shown(client, web_fleet) -> None:  # type: ignore[no-untyped-def]
    from fleetscore.ingest.checkpoint import IngestPaths, write_atomic
    from fleetscore.ingest.streams import SourceStatus

    paths = IngestPaths.of_home(web_fleet.config.home)
    paths.status_dir.mkdir(parents=True, exist_ok=True)
    kafka = SourceStatus("kafka:fleet:a", {("readings", "0"): 12, ("readings", "1"): 0},
                         last_message_at_us=1_700_000_000_000_000, last_commit_at_us=1_700_000_000_500_000)
    nats = SourceStatus("nats:D:b", {("READINGS", "-"): 7})
    for status in (kafka, nats):
        write_atomic(paths.status_dir / f"{status.source}.json", status.encode())
    m = scrape(client)
    assert value(m, "fleetscore_ingest_lag", source="kafka:fleet:a", partition="0") == 12
    assert value(m, "fleetscore_ingest_lag", source="kafka:fleet:a", partition="1", topic="readings") == 0
    assert value(m, "fleetscore_ingest_lag", source="nats:D:b", partition="-") == 7
    page = client.get("/").text
    assert "kafka:fleet:a" in page and "nats:D:b" in page
    for status in (kafka, nats):
        (paths.status_dir / f"{status.source}.json").unlink()
