"""Choosing in-process or pool execution by the planned work (`fleetscore.core.execution`)."""

from __future__ import annotations

import pytest

from fleetscore.core.execution import NUMBA_LOAD_S, PAIR_S, POOL_START_S, choose_execution, work_s


def test_small_work_runs_in_process_with_the_numpy_kernel() -> None:
    e = choose_execution(10_000, 9e6, 2)
    assert (e.mode, e.workers, e.kernel) == ("in-process", 1, "numpy")
    assert e.estimated_s == pytest.approx(work_s(10_000, 9e6, "numpy"))
    assert e.other_s == pytest.approx(POOL_START_S + work_s(10_000, 9e6, "numba") / 2)
    assert e.estimated_s < e.other_s


def test_large_work_goes_to_the_pool_with_numba() -> None:
    e = choose_execution(100_000, 9e7, 2)
    assert (e.mode, e.workers, e.kernel) == ("pool", 2, "numba")
    assert e.estimated_s < e.other_s


def test_a_warm_pool_pays_no_start_up() -> None:
    cold = choose_execution(10_000, 9e6, 2)
    warm = choose_execution(10_000, 9e6, 2, pool_warm=True)
    assert cold.mode == "in-process" and warm.mode == "pool"
    assert warm.estimated_s == pytest.approx(work_s(10_000, 9e6, "numba") / 2)


def test_numba_in_process_only_when_loaded_or_worth_its_load() -> None:
    pays = NUMBA_LOAD_S / (PAIR_S["numpy"] - PAIR_S["numba"])
    assert choose_execution(100, pays * 0.9, 1).kernel == "numpy"
    assert choose_execution(100, pays * 1.1, 1).kernel == "numba"
    assert choose_execution(100, 10.0, 1, numba_loaded=True).kernel == "numba"
    assert choose_execution(100, pays * 10, 1, numba_available=False).kernel == "numpy"


def test_settings_are_kept() -> None:
    assert choose_execution(10, 10.0, 2, kernel="numba").kernel == "numba"
    assert choose_execution(10**6, 1e10, 4, kernel="numpy").kernel == "numpy"
    forced = choose_execution(10**6, 1e10, 4, in_process="always")
    assert forced.mode == "in-process" and forced.reason == "in_process = always"
    never = choose_execution(1, 1.0, 4, in_process="never")
    assert never.mode == "pool" and never.workers == 4 and never.reason == "in_process = never (pool start 1.2 s)"


def test_an_executor_that_keeps_its_tasks_is_never_bypassed() -> None:
    e = choose_execution(1, 1.0, 8, can_inline=False)
    assert e.mode == "pool" and e.other_s is None
    assert set(e.as_dict()) == {"mode", "workers", "kernel", "estimated_s", "other_s", "reason"}


def test_models_that_read_history_cost_more_per_model() -> None:
    assert work_s(1000, 0.0, "numpy", "context:60m") > work_s(1000, 0.0, "numpy", "raw")
    assert choose_execution(10_000, 1e6, 2, features="raw").mode == "in-process"
    assert choose_execution(30_000, 1e6, 2, features="context").mode == "pool"


def test_in_process_setting_is_checked(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fleetscore.config import load_config
    from fleetscore.errors import ConfigError

    (tmp_path / "fleetscore.toml").write_text('[executor]\nin_process = "sometimes"\n')
    with pytest.raises(ConfigError, match="in_process must be one of auto, always, never"):
        load_config(tmp_path)
    (tmp_path / "fleetscore.toml").write_text('[executor]\nin_process = "never"\n')
    assert load_config(tmp_path).executor.in_process == "never"
    assert load_config(tmp_path, env={"FLEETSCORE_IN_PROCESS": "always"}).executor.in_process == "always"
