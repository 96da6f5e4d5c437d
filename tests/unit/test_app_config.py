"""How the faust app is configured, checked without a broker."""

from __future__ import annotations

from pathlib import Path

from streams.app import Worker
from streams.settings import Settings


def test_faust_data_lives_under_spendstream_home_not_the_current_directory(
    tmp_path: Path,
) -> None:
    settings = Settings.from_env(
        {"SPENDSTREAM_HOME": str(tmp_path), "SPENDSTREAM_WORKER_ID": "w-config"}
    )
    app = Worker(settings).app
    assert Path(app.conf.datadir) == tmp_path / "worker" / "w-config"
    assert Path(app.conf.appdir).is_relative_to(tmp_path)
