"""`fleetscore demo`: the whole pipeline on a small simulated fleet, ending with the incidents it found."""

from __future__ import annotations

from pathlib import Path

from conftest import CliResult


def test_demo_reports_incidents_that_match_the_catalog_and_the_labels(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "demo"
    args = ("demo", "--devices", "20", "--sensors", "2", "--train-hours", "6", "--score-hours", "3", "--workers", "1",
            "--home", home)
    out: CliResult = cli(*args, "--json")
    assert out.exit_code == 0, out.stderr
    summary = out.json
    incidents = summary["incidents"]
    listed = cli("incidents", "list", "--limit", "1000", "--home", home, "--json").json["incidents"]
    assert incidents["count"] == len(listed) > 0
    assert incidents["open"] == sum(1 for i in listed if i["status"] in ("open", "acknowledged"))
    assert sum(i["flags"] for i in listed) == summary["anomalies"]  # every flag in exactly one incident
    vs = incidents["vs_labelled_events"]
    assert vs["incidents"] == len(listed) and 0 < vs["events"] and 0 <= vs["true_incidents"] <= len(listed)
    assert vs["precision"] == vs["true_incidents"] / len(listed)
    peaks = [i["severity"] for i in incidents["top"]]
    assert peaks == sorted(peaks, reverse=True) and {i["id"] for i in incidents["top"]} <= {i["id"] for i in listed}
    human = cli(*args)
    assert human.exit_code == 0 and f"incidents          {len(listed):,} " in human.stdout
    assert "highest-severity incidents" in human.stdout  # a rebuilt home: same incidents, new ids
