"""The machine block every benchmark prints: its saturated rule and the calibration history."""

from __future__ import annotations

from pathlib import Path

from loadtest.machine import Machine, decode_rate, sample_values


def _machine(load1: float, cores: int = 2) -> Machine:
    return Machine(cpu="test cpu", cores=cores, load_before=(load1, 0.0, 0.0))


def test_load_above_three_quarters_of_the_cores_is_saturated(tmp_path: Path) -> None:
    quiet, busy = _machine(1.5), _machine(1.51)
    for m in (quiet, busy):
        m.calibrated(100_000.0, "kafka", tmp_path / f"{id(m)}.json")
        m.finish()
    assert not quiet.saturated
    assert busy.saturated and "load average 1.51" in busy.reasons[0]
    assert "saturated  : YES" in busy.text() and "saturated  : no" in quiet.text()


def test_calibration_far_below_the_usual_is_saturated(tmp_path: Path) -> None:
    history = tmp_path / "calibration.json"
    for rate in (100_000.0, 110_000.0, 90_000.0):
        m = _machine(0.1)
        m.calibrated(rate, "kafka", history)
        assert not m.finish().saturated
    slow = _machine(0.1)
    slow.calibrated(50_000.0, "kafka", history)
    assert slow.usual == 100_000.0
    assert slow.finish().saturated and "usual 100,000/s" in slow.reasons[0]
    # a saturated run's figure is not kept: it would drag the usual figure down
    again = _machine(0.1)
    again.calibrated(95_000.0, "kafka", history)
    assert again.usual == 100_000.0
    # other kinds have their own history
    other = _machine(0.1)
    other.calibrated(50_000.0, "decode", history)
    assert other.usual is None and not other.finish().saturated


def test_ratio_and_dict(tmp_path: Path) -> None:
    m = _machine(0.2)
    assert m.ratio(10.0) is None
    m.calibrated(decode_rate(sample_values(500), repeat=1), "decode", tmp_path / "h.json")
    m.finish()
    assert m.calibration and m.calibration > 0
    assert m.ratio(m.calibration) == 1.0
    d = m.as_dict()
    assert d["cores"] == 2 and d["calibration_kind"] == "decode" and d["load_after"]
