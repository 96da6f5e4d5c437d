"""The wheel as users install it: the base install is the SDK and the light commands only.

Builds the wheel from this checkout, checks its dependency list, then installs it into a fresh
virtualenv (dependencies from the package index, as `pip install spendstream` does) and runs
the SDK and the command line there.
"""

from __future__ import annotations

import email.parser
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE = {"confluent-kafka", "fastavro", "msgspec", "click", "rich", "pyyaml", "tzdata"}
SERVER = {"faust-streaming", "aiokafka", "chdb", "chdb-core", "clickhouse-connect", "polars"}


def _name(requirement: str) -> str:
    for stop in "=<>!~[; ":
        requirement = requirement.split(stop)[0]
    return requirement.strip().lower().replace("_", "-")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = ["wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)]
    subprocess.run(
        [sys.executable, "-m", "pip", *build],
        check=True,
        timeout=300,
    )
    (found,) = out.glob("spendstream-*.whl")
    return found


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(archive.read(name).decode())


def test_the_base_install_depends_on_the_sdk_packages_only(wheel: Path) -> None:
    requires = _metadata(wheel).get_all("Requires-Dist") or []
    base = {_name(r) for r in requires if "extra ==" not in r}
    assert base == BASE
    extras = {}
    for requirement in requires:
        if "extra ==" in requirement:
            extra = requirement.split("extra ==")[1].strip().strip("'\"")
            extras.setdefault(extra, set()).add(_name(requirement))
    assert {"faust-streaming", "aiokafka", "polars", "numpy"} <= extras["worker"]
    assert {"clickhouse-connect", "polars", "pyarrow"} <= extras["sink"]
    assert {"chdb-core"} <= extras["local"]
    assert not SERVER & base


def test_the_wheel_carries_schemas_migrations_and_prices(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert "streams/_schemas/token_event.avsc" in names
    assert any(n.startswith("streams/_clickhouse/migrations/0001_") for n in names)
    assert "streams/py.typed" in names


def test_a_base_install_records_events_and_names_the_missing_extra(
    wheel: Path, tmp_path: Path
) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
        check=True,
        timeout=600,
    )
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    installed = {_name(line) for line in listed.splitlines()}
    assert installed >= BASE
    assert not SERVER & installed
    code = (
        "from streams.sdk import build_event, TokenEventProducer\n"
        "from streams.serde import AvroCodec\n"
        "e = build_event(org_id='o', team_id='t', user_id='u', client='c',"
        " provider='anthropic', model='m', input_tokens=3)\n"
        "codec = AvroCodec('token_event')\n"
        "assert codec.decode(codec.encode(e))['input_tokens'] == 3\n"
        "print('sdk ok')\n"
    )
    sdk = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert sdk.returncode == 0, sdk.stderr
    assert "sdk ok" in sdk.stdout
    command = env_dir / "bin" / "spendstream"
    for args in (["--help"], ["budgets", "--help"]):
        shown = subprocess.run([str(command), *args], capture_output=True, text=True, check=False)
        assert shown.returncode == 0, shown.stderr
    worker = subprocess.run(
        [str(command), "worker"], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert worker.returncode == 1
    assert worker.stderr.strip().count("\n") == 0, worker.stderr
    assert "pip install 'spendstream[worker]'" in worker.stderr
