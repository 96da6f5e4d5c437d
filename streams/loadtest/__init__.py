"""The load-test harness behind ``spendstream loadtest`` and ``spendstream demo``: traffic,
scenarios, the run, its charts, and the live display (``streams.loadtest.display``); and the
reference model of budget truth (``streams.loadtest.reference``) its checker and the property
tests compare the worker with. The fault runs' ground-truth checker is
``streams.loadtest.checker`` (a ledger of acked events, ``check``), their processes
``streams.loadtest.procs`` and their load ``streams.loadtest.load``.
"""

from streams.loadtest.checker import CheckResult, Ledger, LedgerWriter, check
from streams.loadtest.display import DisplaySnapshot, LiveDisplay
from streams.loadtest.load import LedgerProducer, plan_events
from streams.loadtest.procs import Procs, drop, env, prepare, run_settings

__all__ = [
    "CheckResult",
    "DisplaySnapshot",
    "Ledger",
    "LedgerProducer",
    "LedgerWriter",
    "LiveDisplay",
    "Procs",
    "check",
    "drop",
    "env",
    "plan_events",
    "prepare",
    "run_settings",
]
