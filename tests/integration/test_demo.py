"""``spendstream demo`` end to end on the real local stack, shortened to 12 s of traffic.

The run must tell its story (the team's block-mode budget reached and ``check()`` refusing
it, the runaway session flagged, the org budget's 50% and 80% alerts), its numbers must check
out against the ledger of what was acknowledged (the fault suite's checker: nothing lost,
doubled or mispriced, every total and rollup equal), the chart must be written, and nothing
it started may outlive it. A second run is stopped with SIGINT as Ctrl-C would: exit 130, one
line, no traceback, no process left.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from streams.demo import plan_demo
from streams.demo.plan import BLOCK_BUDGET, BLOCK_TEAM, ORG_BUDGET
from streams.demo.run import run_demo
from streams.loadtest import drop, env, run_settings
from streams.settings import Settings

pytestmark = pytest.mark.integration


def _children_of(pid: int) -> dict[int, str]:
    """Command lines of the live spendstream processes whose parent is ``pid``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        state = stat.rsplit(")", 1)[1].split()[0]
        if ppid == pid and state != "Z" and "streams" in cmdline:
            found[int(entry.name)] = cmdline
    return found


def test_the_demo_blocks_the_team_flags_the_runaway_and_checks_out(
    stack_settings: Settings, tmp_path: Path
) -> None:
    plan = plan_demo(12, load_rate=100)
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    before = _children_of(os.getpid())
    outcome = run_demo(stack_settings, plan, console, tmp_path / "run", live=False, up_stack=False)
    try:
        shown = out.getvalue()
        checked = outcome.checked
        assert checked is not None
        assert checked.ok, checked.summary()
        assert checked.acked > plan.load_count * 0.9
        assert checked.rows == checked.acked and checked.lost == 0

        assert outcome.refused > 0 and outcome.refused_by == BLOCK_BUDGET
        assert outcome.crossed_at_ms is not None and outcome.refused_at_ms is not None
        assert outcome.refused_at_ms >= outcome.crossed_at_ms
        hundred = [a for a in outcome.alerts if a.get("budget_id") == BLOCK_BUDGET]
        assert 100 in {a["threshold_pct"] for a in hundred}
        reached = {a["threshold_pct"] for a in outcome.alerts if a.get("budget_id") == ORG_BUDGET}
        assert reached == set(plan.org_thresholds)
        runaway = outcome.kinds("runaway_session")
        assert [a["session_id"] for a in runaway] == [plan.runaway_session]

        assert outcome.chart is not None
        assert outcome.chart.read_bytes()[:4] == b"\x89PNG"
        assert outcome.ok
        # the display said so while it ran (plain lines: not a terminal)
        assert f"BLOCKED by {BLOCK_BUDGET}" in shown and BLOCK_TEAM in shown
        assert "runaway_session" in shown and "flagged runaway by the worker" in shown
        assert _children_of(os.getpid()) == before
    finally:
        drop(outcome.settings)


def test_ctrl_c_stops_the_demo_cleanly(stack_settings: Settings, tmp_path: Path) -> None:
    environment = {**env(run_settings(stack_settings)), "SPENDSTREAM_HOME": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams", "demo", "--seconds", "30", "--rate", "100"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    children: dict[int, str] = {}
    try:
        # once the traffic runs, every process and thread of the run is up
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if any("demo: sending" in line for line in _log_lines(tmp_path)):
                break
            time.sleep(0.5)
        time.sleep(2)
        children = _children_of(proc.pid)
        commands = {word for c in children.values() for word in c.split()}
        assert {"worker", "sink", "streams.loadtest.load"} <= commands, children
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = stdout.decode() + stderr.decode()
    assert proc.returncode == 130, text
    assert "Traceback" not in text
    assert "stopped" in stdout.decode()
    # the worker, the sink and the load were stopped and reaped, not left behind
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]
    assert "Traceback" not in "".join(_log_lines(tmp_path))


def _log_lines(home: Path) -> list[str]:
    path = home / "logs" / "demo.log"
    return path.read_text().splitlines() if path.exists() else []
