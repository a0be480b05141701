"""Operators' marks feed evaluate, train and models health; models adjust writes a new version.

One small fleet of robust models on raw readings (3 devices x 2 sensors, minute readings, 6 h):
v1 is trained on the first 2 h, then four hourly windows are scored. dev-1/s0 shifts by +10 sigma
for 03:00-03:59 (an incident an operator marks true); dev-2/s1 has three short bursts just beyond
its v1 threshold at 03:40, 04:40 and 05:40 (incidents the operator marks false).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from fleetscore.api import Fleet
from fleetscore.core.incidents import Incident
from fleetscore.storage import layout
from fleetscore.storage.models import ModelStore

H = 3600 * 10**6
MIN = 60 * 10**6
T0 = 1_767_225_600 * 10**6  # 2026-01-01T00:00:00Z
LEVEL, SIGMA = 20.0, 1.0
BURSTS = (3 * H + 40 * MIN, 4 * H + 40 * MIN, 5 * H + 40 * MIN)
BURST_LEN = 4


def iso(us: int) -> str:
    from fleetscore.core.times import iso as fmt

    return fmt(us)


def readings(devices: int = 3, sensors: int = 2, hours: int = 6, seed: int = 7) -> pa.Table:
    rng = np.random.default_rng(seed)
    ts = T0 + np.arange(hours * 60, dtype=np.int64) * MIN
    parts = []
    for d in range(devices):
        for s in range(sensors):
            value = LEVEL + SIGMA * rng.standard_normal(ts.size)
            if (d, s) == (1, 0):
                value[(ts >= T0 + 3 * H) & (ts < T0 + 4 * H)] += 10 * SIGMA
            parts.append(pa.table({"ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
                                   "device": [f"dev-{d}"] * ts.size, "sensor": [f"s{s}"] * ts.size, "value": value}))
    return pa.concat_tables(parts)


def key(t: pa.Table, device: str, sensor: str) -> pa.Array:
    return pc.and_(pc.equal(t.column("device"), device), pc.equal(t.column("sensor"), sensor))


def robust_model(fleet: Fleet, version: str, device: str, sensor: str) -> tuple[float, float, float]:
    """(centre, weight, intercept) of one robust model."""
    row = fleet.model(device, sensor, version)
    params = ModelStore(fleet.storage).read_bundle(version, row["shard"])["robust"]
    slot = row["slot"]
    return float(params.center[slot, 0]), float(params.weight[slot, 0]), float(params.intercept[slot])


@dataclass
class Scenario:
    home: Path
    fleet: Fleet
    runs: dict[int, str]  # window start hour -> run id
    true: Incident
    false: list[Incident]


def find(fleet: Fleet, device: str, at_us: int) -> Incident:
    found = [i for i in fleet.incidents(device=device, limit=1000) if i.start_us <= at_us <= i.last_us]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    home = tmp_path_factory.mktemp("feedback") / "home"
    fleet = Fleet.open(home, workers=1)
    table = readings()
    held = pc.and_(key(table, "dev-2", "s1"), pc.greater_equal(pc.cast(table.column("ts"), pa.int64()), T0 + 2 * H))
    fleet.import_table(table.filter(pc.invert(held)))
    trained = fleet.train(iso(T0), iso(T0 + 2 * H), kind="robust", features="raw")
    assert trained.version == "v1" and trained.excluded_marked_true == 0
    # dev-2/s1's bursts: 1.25 thresholds out under v1 (flagged by v1, not once the threshold is raised)
    centre, weight, _ = robust_model(fleet, "v1", "dev-2", "s1")
    rest = table.filter(held)
    ts = pc.cast(rest.column("ts"), pa.int64()).to_numpy()
    value = np.full(ts.size, centre)  # the model's centre, so nothing else of it is flagged
    for start in BURSTS:
        value[(ts >= T0 + start) & (ts < T0 + start + BURST_LEN * MIN)] = centre + 1.25 / weight
    fleet.import_table(rest.set_column(3, "value", pa.array(value)))
    runs = {h: fleet.score(iso(T0 + h * H), iso(T0 + (h + 1) * H)).run_id for h in range(2, 6)}
    true = find(fleet, "dev-1", T0 + 3 * H + 30 * MIN)
    false = [find(fleet, "dev-2", T0 + b) for b in BURSTS[:2]]
    fleet.mark_incident(true.id, "true", "pump shifted", "op")
    for inc in false:
        fleet.mark_incident(inc.id, "false", "calibration", "op")
    yield Scenario(home, fleet, runs, true, false)
    fleet.close()


def test_incidents_are_what_the_scenario_says(scenario: Scenario) -> None:
    assert [s.sensor for s in scenario.true.sensors] == ["s0"] and scenario.true.flags >= 55
    assert all([s.sensor for s in i.sensors] == ["s1"] and i.flags == BURST_LEN for i in scenario.false)


def test_evaluate_from_marks_gives_precision_over_marked_incidents(scenario: Scenario, cli) -> None:  # type: ignore[no-untyped-def]
    run = scenario.runs[3]  # holds the true incident and the first false one
    r = cli("evaluate", "--run", run, "--from-marks", "--home", scenario.home, "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    ev = r.json
    t, f = scenario.true.flags, scenario.false[0].flags
    assert ev["true_pos"] == t and ev["false_pos"] == f
    assert ev["precision"] == pytest.approx(t / (t + f))
    # every reading of the true span is a positive: the unflagged ones are false negatives
    span = scenario.true.last_us - scenario.true.start_us
    assert ev["true_pos"] + ev["false_neg"] == span // MIN + 1
    assert ev["events"] == 1 and ev["events_detected"] == 1 and set(ev["by_kind"]) == {"marked true"}
    # the next window holds only a false incident: nothing flagged is right
    r = cli("evaluate", "--run", scenario.runs[4], "--from-marks", "--home", scenario.home, "--json")
    assert r.exit_code == 0 and r.json["precision"] == 0.0 and r.json["false_pos"] == BURST_LEN


def test_evaluate_from_marks_refuses_what_it_cannot_do(scenario: Scenario, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    home = ("--home", scenario.home)
    r = cli("evaluate", "--run", scenario.runs[2], "--from-marks", *home, "--json")
    assert r.exit_code == 2 and "no scored reading" in r.json["error"] and "incidents mark" in r.json["error"]
    labels = tmp_path / "l.csv"
    labels.write_text("ts,device,sensor,label\n")
    r = cli("evaluate", "--run", scenario.runs[3], "--from-marks", "--labels", labels, *home, "--json")
    assert r.exit_code == 2 and "either --labels FILE or --from-marks" in r.json["error"]
    r = cli("evaluate", "--run", scenario.runs[3], *home, "--json")
    assert r.exit_code == 2 and "either --labels FILE or --from-marks" in r.json["error"]
    r = cli("evaluate", "--run", "../../etc", "--from-marks", *home, "--json")
    assert r.exit_code == 2 and "traceback" not in r.stdout.lower()


def test_models_health_lists_a_model_after_two_false_marks(scenario: Scenario, cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("models", "health", "--home", scenario.home, "--json")
    assert r.exit_code == 0, r.stderr
    listed = r.json["false_alarms"]
    assert [(u["device"], u["sensor"], u["false_marks"]) for u in listed] == [("dev-2", "s1", 2)]
    entry = listed[0]
    assert entry["action"] == "adjust" and entry["expected"] == pytest.approx(1e-4)
    assert entry["suggested_alarm_rate"] == pytest.approx(1e-5)
    assert entry["command"] == "fleetscore models adjust dev-2 s1 --alarm-rate 1e-05"
    assert cli("models", "health", "--home", scenario.home, "--min-false-marks", "3", "--json").json["false_alarms"] == []
    human = cli("models", "health", "--home", scenario.home)
    assert human.exit_code == 0 and "models adjust dev-2 s1" in human.stdout
    for bad in ("0", "-1", "x"):
        r = cli("models", "health", "--home", scenario.home, "--min-false-marks", bad)
        assert r.exit_code == 2 and "Traceback" not in r.stdout + r.stderr


def test_train_leaves_out_readings_of_incidents_marked_true(scenario: Scenario, cli) -> None:  # type: ignore[no-untyped-def]
    fleet, true = scenario.fleet, scenario.true
    window = ("--from", iso(T0), "--to", iso(T0 + 6 * H), "--kind", "robust", "--features", "raw")
    r = cli("train", *window, "--no-release", "--workers", "1", "--home", scenario.home, "--json")
    assert r.exit_code == 0, r.stderr
    marked = r.json
    # dev-1/s0's readings from its first to its last flag, 2 readings (its interval) either side
    ts = pc.cast(fleet.readings(iso(T0), iso(T0 + 6 * H)).filter(key(fleet.readings(iso(T0), iso(T0 + 6 * H)),
                                                                           "dev-1", "s0")).column("ts"), pa.int64())
    inside = pc.and_(pc.greater_equal(ts, true.start_us - 2 * MIN), pc.less_equal(ts, true.last_us + 2 * MIN))
    assert marked["excluded_marked_true"] == pc.sum(inside).as_py() == (true.last_us - true.start_us) // MIN + 5
    assert fleet.model("dev-1", "s0", marked["version"])["n_train"] == 360 - marked["excluded_marked_true"]
    assert fleet.model("dev-2", "s1", marked["version"])["n_train"] == 360  # marked false: trained on
    # without the mark (the operator now says ignore) the shift is learned as normal
    fleet.mark_incident(true.id, "ignore", "", "op")
    try:
        plain = cli("train", *window, "--no-release", "--workers", "1", "--home", scenario.home, "--json").json
    finally:
        fleet.mark_incident(true.id, "true", "pump shifted", "op")
    assert plain["excluded_marked_true"] == 0
    c_marked, w_marked, _ = robust_model(fleet, marked["version"], "dev-1", "s0")
    c_plain, w_plain, _ = robust_model(fleet, plain["version"], "dev-1", "s0")
    assert abs(c_marked - LEVEL) < abs(c_plain - LEVEL)
    assert w_marked > 3 * w_plain  # its threshold is not widened to take in the shift
    assert fleet.version().version == "v1"


def test_models_adjust_writes_a_new_version_with_fewer_flags(scenario: Scenario, cli) -> None:  # type: ignore[no-untyped-def]
    fleet = scenario.fleet
    storage = fleet.storage
    v1_files = {k: storage.read_bytes(k) for k in (layout.manifest_key("v1"), layout.shard_key("v1", 0))}
    r = cli("models", "adjust", "dev-2", "s1", "--alarm-rate", "1e-7", "--version", "v1", "--home", scenario.home,
            "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    out = r.json
    new = out["version"]
    assert out["base_version"] == "v1" and out["sensors"] == ["s1"] and out["released"] is False
    assert out["previous_rate"] == pytest.approx(1e-4) and out["alarm_rate"] == 1e-7
    assert out["training_alarms_after"] <= out["training_alarms_before"]
    assert fleet.version().version == "v1"  # not released
    assert {k: storage.read_bytes(k) for k in v1_files} == v1_files  # the old version is untouched
    assert fleet.model("dev-2", "s1", new)["reason"].startswith("adjusted: alarm rate 1e-07")
    assert fleet.model("dev-2", "s0", new)["reason"] == fleet.model("dev-2", "s0", "v1")["reason"]
    _, w_old, i_old = robust_model(fleet, "v1", "dev-2", "s1")
    _, w_new, i_new = robust_model(fleet, new, "dev-2", "s1")
    assert w_new == w_old and i_new > 1.25 * i_old  # the threshold moved beyond the bursts
    assert robust_model(fleet, new, "dev-1", "s0") == robust_model(fleet, "v1", "dev-1", "s0")
    assert fleet.model("dev-2", "s1", new)["params"]["adjusted"] == [{"device": "dev-2", "sensor": "s1", "alarm_rate": 1e-7}]

    def flags(run_id: str) -> int:
        pred = fleet.predictions(run_id)
        return int(pc.sum(pred.filter(key(pred, "dev-2", "s1")).column("is_anomaly")).as_py() or 0)

    before = flags(scenario.runs[5])
    after = fleet.score(iso(T0 + 5 * H), iso(T0 + 6 * H), version=new)
    assert before == BURST_LEN and flags(after.run_id) == 0
    # releasing on request
    r = cli("models", "adjust", "dev-0", "s0", "--alarm-rate", "0.001", "--release", "--home", scenario.home, "--json")
    assert r.exit_code == 0 and r.json["released"] is True and fleet.version().version == r.json["version"]
    assert r.json["base_version"] == "v1"
    fleet.release("v1")


@pytest.mark.parametrize("rate, message", [("0", "(0, 0.5)"), ("0.5", "(0, 0.5)"), ("-1e-4", "(0, 0.5)"),
                                           ("nan", "(0, 0.5)"), ("inf", "(0, 0.5)"), ("abc", "Invalid value for '--alarm-rate'")])
def test_models_adjust_refuses_bad_rates(scenario: Scenario, cli, rate: str, message: str) -> None:  # type: ignore[no-untyped-def]
    before = len(scenario.fleet.versions())
    r = cli("models", "adjust", "dev-2", "s1", "--alarm-rate", rate, "--home", scenario.home, "--json")
    assert r.exit_code == 2 and message in r.stdout + r.stderr
    assert len(scenario.fleet.versions()) == before


@pytest.mark.parametrize("args, message", [
    (("nope", "s1", "--alarm-rate", "1e-5"), "no model of device 'nope'"),
    (("dev-2", "s9", "--alarm-rate", "1e-5"), "no model for sensor 's9'"),
    (("dev-2", "s1", "--alarm-rate", "1e-5", "--version", "v99"), "v99"),
    (("dev-2", "s1", "--alarm-rate", "1e-5", "--version", "../v1"), "version"),
    (("dev-2", "--alarm-rate", "1e-5"), "Missing argument"),
    (("dev-2", "s1"), "Missing option '--alarm-rate'"),
])
def test_models_adjust_refuses_unknown_models_and_versions(scenario: Scenario, cli, args: tuple[str, ...],
                                                           message: str) -> None:  # type: ignore[no-untyped-def]
    before = len(scenario.fleet.versions())
    r = cli("models", "adjust", *args, "--home", scenario.home)
    assert r.exit_code == 2 and message in r.stdout + r.stderr, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert len(scenario.fleet.versions()) == before


@pytest.mark.parametrize("kind", ["device", "ocsvm"])
def test_models_adjust_recalibrates_other_kinds(scenario: Scenario, kind: str) -> None:
    fleet = scenario.fleet
    base = fleet.train(iso(T0), iso(T0 + 2 * H), kind=kind, features="raw", release=False,
                       **({"nu": 0.05, "gamma": "scale", "alarm_rate": 1e-3} if kind == "ocsvm" else {}))
    done = fleet.adjust_model("dev-2", "s1", 1e-6, version=base.version)
    assert fleet.version().version == "v1" and done.base_version == base.version
    row = fleet.model("dev-2", "s1", done.version)
    old = ModelStore(fleet.storage).read_bundle(base.version, row["shard"])[kind]
    new = ModelStore(fleet.storage).read_bundle(done.version, row["shard"])[kind]
    slot = row["slot"]
    if kind == "device":  # one model over the device's sensors; its decision counts decades of rarity
        assert done.sensors == ["s0", "s1"] and done.training_rows is None
        assert done.previous_rate == pytest.approx(1e-4) and new.intercept[slot] == pytest.approx(6.0)
        assert fleet.model("dev-2", "s0", done.version)["reason"].startswith("adjusted")
    else:
        assert done.sensors == ["s1"] and done.previous_rate == pytest.approx(1e-3)
        assert done.training_rows == 120 and done.training_alarms_after <= done.training_alarms_before
        assert new.intercept[slot] > old.intercept[slot]  # decision = kernel sum + intercept: a raised threshold
    others = np.arange(len(old.intercept)) != slot
    assert np.array_equal(new.intercept[others], old.intercept[others])
    # a higher rate than the model's own never raises the threshold, and vice versa
    looser = fleet.adjust_model("dev-2", "s1", 0.4, version=done.version)
    loose = ModelStore(fleet.storage).read_bundle(looser.version, row["shard"])[kind]
    assert loose.intercept[slot] <= new.intercept[slot]  # both kinds: a lower intercept alarms more
