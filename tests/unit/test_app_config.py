"""How the faust app is configured, checked without a broker."""

from __future__ import annotations

from pathlib import Path

from streams.settings import Settings
from streams.worker import Worker


def test_faust_data_lives_under_spendstream_home_not_the_current_directory(
    tmp_path: Path,
) -> None:
    settings = Settings.from_env(
        {"SPENDSTREAM_HOME": str(tmp_path), "SPENDSTREAM_WORKER_ID": "w-config"}
    )
    app = Worker(settings).app
    assert Path(app.conf.datadir) == tmp_path / "worker" / "w-config"
    assert Path(app.conf.appdir).is_relative_to(tmp_path)


def test_fetch_size_per_partition_comes_from_the_setting(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"SPENDSTREAM_HOME": str(tmp_path), "SPENDSTREAM_WORKER_FETCH_MIB": "3"}
    )
    assert Worker(settings).app.conf.consumer_max_fetch_size == 3 * 1024 * 1024
    default = Settings.from_env({"SPENDSTREAM_HOME": str(tmp_path)})
    assert Worker(default).app.conf.consumer_max_fetch_size == 8 * 1024 * 1024
