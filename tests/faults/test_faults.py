"""The fault-injection suite: faults at random points under steady load, the ground truth after.

The suite runs ``SHORT`` (about a minute: a worker and a sink SIGKILLed at once, a worker
paused past its session timeout). ``make faults`` (``FAULTS=long``) runs ``LONG``: every fault
kind, repeated, each run with its own topics and database; its results go to
``$FAULTS_RESULTS`` and the table in tests/faults/README.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streams.local import LocalClickHouse, LocalKafka
from streams.settings import Settings
from tests.faults.runner import FAULTS, FaultRun, execute

pytestmark = pytest.mark.integration

SHORT = (FaultRun("kill-both+pause-worker", ("kill-both", "pause-worker"), 150, 20, seed=7),)

LONG = (
    FaultRun("kill-worker x3", ("kill-worker",) * 3, seed=11),
    FaultRun("kill-sink x3", ("kill-sink",) * 3, seed=12),
    FaultRun("kill-both x3", ("kill-both",) * 3, seed=13),
    FaultRun("pause worker, sink", ("pause-worker", "pause-sink", "pause-worker"), seed=14),
    FaultRun("pause broker, clickhouse", ("pause-broker", "pause-clickhouse"), seed=15),
    FaultRun("restart broker", ("restart-broker",), seed=16, seconds=40),
    FaultRun("clickhouse down 30s", ("clickhouse-down-30s",), seed=17, seconds=45),
    FaultRun("rebalance x2", ("rebalance", "rebalance"), seed=18, seconds=40),
    FaultRun(
        "everything, shuffled",
        ("kill-worker", "pause-broker", "kill-sink", "rebalance", "pause-clickhouse", "kill-both"),
        seed=19,
        seconds=60,
    ),
)

RUNS = LONG if os.environ.get("FAULTS") == "long" else SHORT


def test_every_fault_kind_has_a_long_run() -> None:
    assert {k for run in LONG for k in run.faults} == set(FAULTS)


@pytest.mark.parametrize("run", RUNS, ids=lambda r: r.name)
def test_fault_run_is_exact(
    run: FaultRun,
    stack_settings: Settings,
    local_kafka: LocalKafka,
    local_clickhouse: LocalClickHouse,
    tmp_path: Path,
) -> None:
    outcome = execute(stack_settings, local_kafka, local_clickhouse, run, tmp_path)
    result = outcome.result
    detail = f"{result.summary()}\nfaults: {outcome.log}\nlogs: {tmp_path / 'logs'}"
    assert result.acked > 0.95 * run.count, detail
    assert result.alerts_expected >= 4, detail  # the planned budgets were crossed
    assert result.ok, detail
