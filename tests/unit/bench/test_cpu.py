"""The benchmarks' CPU accounting: /proc parsing and the bounds derived from it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.cpu import DRIVER, cpu_report, process_cpu_seconds
from bench.pipeline import machine_bounds

TICKS = os.sysconf("SC_CLK_TCK")


def write_stat(proc: Path, pid: int, comm: str, utime: int, stime: int) -> None:
    # Fields after the command: state ppid pgrp session tty tpgid flags minflt cminflt majflt
    # cmajflt utime stime ...
    rest = ["S", "1", str(pid), str(pid), "0", "-1", "0", "0", "0", "0", "0"]
    rest += [str(utime), str(stime), "0", "0", "20", "0", "1"]
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "stat").write_text(f"{pid} ({comm}) {' '.join(rest)}\n")


def test_cpu_seconds_are_user_plus_system_even_with_a_tricky_command_name(tmp_path: Path) -> None:
    write_stat(tmp_path, 42, "gunicorn: worker [main:app] (x) y", 3 * TICKS, 1 * TICKS)

    assert process_cpu_seconds(42, tmp_path) == pytest.approx(4.0)


def test_a_vanished_process_has_no_cpu(tmp_path: Path) -> None:
    assert process_cpu_seconds(7, tmp_path) is None


def test_own_process_is_read_from_the_real_proc() -> None:
    seconds = process_cpu_seconds(os.getpid())

    assert seconds is not None
    assert seconds > 0


def test_report_splits_our_functions_from_the_stand_ins_and_derives_the_bounds() -> None:
    before = {"fn-fanout": 10.0, "firestore": 5.0, "cloudtasks": 1.0, DRIVER: 2.0}
    after = {"fn-fanout": 16.0, "firestore": 9.0, "cloudtasks": 3.0, DRIVER: 3.0}

    report = cpu_report(before, after, 1000, "due_message", wall_seconds=8.0, cores=2)

    assert report["cpu_seconds"] == {
        "fn-fanout": 6.0,
        "firestore": 4.0,
        "cloudtasks": 2.0,
        DRIVER: 1.0,
    }
    assert report["cpu_ms_per_due_message_total"] == 13.0
    assert report["cpu_ms_per_due_message_ours"] == 6.0
    assert report["cpu_ms_per_due_message_stand_ins"] == 6.0  # the driver is neither
    assert report["machine_utilisation"] == pytest.approx(13 / 16, abs=0.01)
    assert report["cpu_bound_per_second"] == pytest.approx(1000 * 2 / 13, abs=0.1)
    assert report["stand_ins_only_per_second"] == pytest.approx(1000 * 2 / 6, abs=0.1)


def test_a_component_restarted_meanwhile_never_counts_negative() -> None:
    report = cpu_report({"postgres": 50.0}, {"postgres": 1.0}, 10, "due_message", 1.0, 2)

    assert report["cpu_seconds"]["postgres"] == 0.0


def test_machine_bounds_compare_the_whole_run_with_cpu_and_the_fanout_phase_with_push() -> None:
    pipeline = {
        "seconds": 12.5,
        "select_seconds": 2.5,
        "fanout_seconds": 10.0,
        "fanout_messages_acked": 800,
        "fanout_median_ms": 20.0,
        "cpu": {"cpu_bound_per_second": 80.0, "stand_ins_only_per_second": 160.0},
    }
    push = {"fanout_like_20ms": {"max_in_flight": 2}}

    bounds = machine_bounds(pipeline, push)

    assert bounds["messages_per_second"] == 64.0
    assert bounds["share_of_cpu_bound"] == 0.8
    assert bounds["fanout_phase_messages_per_second"] == 80.0
    assert bounds["push_bound_messages_per_second"] == 100.0
    assert bounds["share_of_push_bound"] == 0.8


def test_other_work_on_the_machine_shrinks_the_bound_to_the_cores_it_left() -> None:
    before = {"fn-fanout": 0.0, "firestore": 0.0}
    after = {"fn-fanout": 5.0, "firestore": 5.0}
    report = cpu_report(before, after, 100, "due_message", 10.0, 2, host_busy=15.0)
    assert report["others_cpu_seconds"] == 5.0
    assert report["others_cores"] == 0.5
    # 10 CPU seconds for 100 units on the 1.5 cores left: 15 units a second
    assert report["cpu_bound_per_second_beside_others"] == 15.0
    assert report["cpu_bound_per_second"] == 20.0
    assert "others_cores" not in cpu_report(before, after, 100, "due_message", 10.0, 2)
