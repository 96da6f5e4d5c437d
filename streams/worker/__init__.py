"""The stream worker: faust agents over the pure stage processors, budgets, alerts, rollups.

Needs the ``worker`` extra (faust-streaming, aiokafka, polars, ...). The ``spendstream worker``
command lives in ``streams.worker.cli`` and is imported only by the command line.
"""

from streams.worker.alertlog import AlertLog
from streams.worker.config import WorkerConfig, broker_settings, partials_topic, worker_topics
from streams.worker.worker import (
    GC_THRESHOLDS,
    PACK_MAX,
    Worker,
    clickhouse_baseline_reader,
    current_totals,
    tune_gc,
)

__all__ = [
    "GC_THRESHOLDS",
    "PACK_MAX",
    "AlertLog",
    "Worker",
    "WorkerConfig",
    "broker_settings",
    "clickhouse_baseline_reader",
    "current_totals",
    "partials_topic",
    "tune_gc",
    "worker_topics",
]
