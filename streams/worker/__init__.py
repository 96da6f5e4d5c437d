"""The stream worker: faust agents over the pure stage processors, budgets, alerts, rollups.

Needs the ``worker`` extra (faust-streaming, aiokafka, polars, ...). The ``spendstream worker``
command lives in ``streams.worker.cli`` and is imported only by the command line.
"""

from streams.worker.alertlog import AlertLog
from streams.worker.config import WorkerConfig, broker_settings, partials_topic, worker_topics
from streams.worker.sinkview import SinkView
from streams.worker.worker import GC_THRESHOLDS, Worker, current_totals, tune_gc

__all__ = [
    "GC_THRESHOLDS",
    "AlertLog",
    "SinkView",
    "Worker",
    "WorkerConfig",
    "broker_settings",
    "current_totals",
    "partials_topic",
    "tune_gc",
    "worker_topics",
]
