"""``spendstream demo``: the whole pipeline on the embedded local stack, told as a story.

The plan (``streams.demo.plan``: traffic, budgets, expected outcome) is pure; the run
(``streams.demo.run``) uses the load-test harness's parts (its load process, ledger, checker
and live display) and the real ``spendstream worker`` / ``sink`` processes; the chart is
``streams.demo.chart``. The command is ``streams.demo.cli.demo``.
"""

from streams.demo.cli import demo
from streams.demo.plan import DemoPlan, plan_demo

__all__ = ["DemoPlan", "demo", "plan_demo"]
