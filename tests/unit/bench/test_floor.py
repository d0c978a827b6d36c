"""The CPU floor benchmark's arithmetic: medians, the floor's sums, ratios and the JSON shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.floor import (
    PART_KEYS,
    PARTS,
    RESULTS,
    Part,
    floor_of,
    medians,
    per_round,
    ratios,
    real_figures,
    report,
)

ONE_ROUND = {
    "framework_http": 1.5,
    "framework_test_client": 1.0,
    "decode_validate": 0.2,
    "log_line": 0.1,
    "creates": 1.2,
    "ledger": 0.8,
    "select_read": 0.9,
    "select_publish": 0.3,
    "select_advance": 0.4,
}


def test_every_part_is_a_function_of_ours() -> None:
    assert {p.function for p in PARTS} == {"fanout", "select"}
    assert len(set(PART_KEYS)) == len(PARTS)
    assert set(ONE_ROUND) == set(PART_KEYS)


def test_medians_are_per_part_and_ignore_rounds_without_the_part() -> None:
    rounds = [{"a": 3.0, "b": 1.0}, {"a": 1.0}, {"a": 2.0, "b": 5.0, "idle": 0.5}]

    assert medians(rounds) == {"a": 2.0, "b": 3.0, "idle": 0.5}


def test_medians_list_the_parts_in_their_declared_order() -> None:
    shuffled = dict(reversed(list(ONE_ROUND.items())))

    assert list(medians([shuffled])) == list(PART_KEYS)


def test_the_floor_sums_each_functions_counted_parts() -> None:
    floor = floor_of(ONE_ROUND)

    # fanout: HTTP framework + decode + log + creates + ledger; the test client is not counted.
    assert floor["fanout"] == pytest.approx(1.5 + 0.2 + 0.1 + 1.2 + 0.8)
    assert floor["select"] == pytest.approx(0.9 + 0.3 + 0.4)
    assert floor["select_without_advance"] == pytest.approx(0.9 + 0.3)
    assert floor["total"] == pytest.approx(floor["fanout"] + floor["select"])
    # The in-process figure swaps the HTTP framework for the test client's.
    assert floor["fanout_in_process"] == pytest.approx(1.0 + 0.2 + 0.1 + 1.2 + 0.8)


def test_a_part_left_out_of_the_floor_is_not_summed() -> None:
    parts = (Part("x", "fanout", "x"), Part("y", "fanout", "y", in_floor=False))

    floor = floor_of({"x": 2.0, "y": 5.0}, parts)

    assert floor == {"fanout": 2.0, "select": 0.0, "select_without_advance": 0.0, "total": 2.0}


def test_ratios_only_where_both_sides_have_a_number() -> None:
    real = {"fanout": 9.0, "select": None, "total": 12.0, "fanout_rounds": [1.0], "extra": 1.0}
    floor = {"fanout": 3.0, "select": 1.0, "total": 0.0}

    assert ratios(real, floor) == {"fanout": 3.0}


def test_the_report_carries_rounds_medians_floor_goal_and_ratios() -> None:
    rounds = [ONE_ROUND, {k: v * 2 for k, v in ONE_ROUND.items()}, ONE_ROUND]
    machine = {"cpus": 2, "load_average": (1.0, 2.0, 3.0)}

    result = report(rounds, {"total": 11.0}, machine, {"rounds": 3}, goal_ms=4.0)

    assert result["benchmark"] == "floor"
    assert result["unit"] == "cpu_ms_per_due_message"
    assert result["rounds"] == rounds
    assert result["median"] == medians(rounds)
    assert result["floor"] == floor_of(ONE_ROUND)
    assert result["floor_over_goal"] == pytest.approx(result["floor"]["total"] / 4.0, abs=0.01)
    assert result["real_over_floor"] == {"total": pytest.approx(11.0 / 5.4, abs=0.01)}
    assert set(result["parts"]) == set(PART_KEYS)
    json.dumps(result)  # serialisable as it is


def test_the_committed_result_has_the_reports_shape() -> None:
    path: Path = RESULTS / "floor.json"
    if not path.exists():
        pytest.skip("bench/results/floor.json not written yet")
    result = json.loads(path.read_text())

    assert result["median"] == medians(result["rounds"])
    assert result["floor"] == floor_of(result["median"])
    assert result["real_over_floor"] == ratios(result["real"], result["floor"])


def test_each_round_has_its_own_floor_and_ratio_to_its_own_real_run() -> None:
    quiet = {**ONE_ROUND, "real_fanout_in_process": 7.0}
    busy = {k: v * 2 for k, v in quiet.items()}

    rounds = per_round([quiet, busy, ONE_ROUND])

    assert [r["floor"] for r in rounds] == [
        floor_of(ONE_ROUND),
        floor_of(busy),
        floor_of(ONE_ROUND),
    ]
    assert rounds[0]["real_over_floor"] == {"fanout_in_process": pytest.approx(7.0 / 3.3, abs=0.01)}
    assert rounds[1]["real_over_floor"] == rounds[0]["real_over_floor"]
    assert "real_over_floor" not in rounds[2]


def test_real_figures_take_the_rounds_median_and_the_bursts_functions() -> None:
    rounds = [{"real_fanout_in_process": v} for v in (9.0, 7.0, 8.0)]
    burst = {"cpu": {"cpu_ms_per_due_message": {"fn-fanout": 9.71, "fn-select": 2.92}}}

    real = real_figures(rounds, burst)

    assert real == {"fanout_in_process": 8.0, "fanout": 9.71, "select": 2.92, "total": 12.63}
    assert real_figures([{}], None) == {}
