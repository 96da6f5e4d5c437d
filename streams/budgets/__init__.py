"""Budgets: the model and its YAML, the live view of the budgets topic, publishing, baselines.

Other rooms import budgets from here; the ``spendstream budgets`` command lives in
``streams.budgets.cli`` and is imported only by the command line.
"""

from streams.budgets.baseline import baseline_query, read_baseline
from streams.budgets.model import (
    DEFAULT_THRESHOLDS,
    MODES,
    NANOS_PER_USD,
    SCOPE_FIELDS,
    SIGNATURE_FIELDS,
    UNITS,
    Budget,
    BudgetError,
    BudgetMatcher,
    budget_from_spec,
    budget_problems,
    parse_budgets_yaml,
    parse_duration_s,
    parse_money,
    parse_tokens,
)
from streams.budgets.publish import plan_apply, publish
from streams.budgets.view import BudgetView, StaticBudgets, budget_topics, read_budgets

__all__ = [
    "DEFAULT_THRESHOLDS",
    "MODES",
    "NANOS_PER_USD",
    "SCOPE_FIELDS",
    "SIGNATURE_FIELDS",
    "UNITS",
    "Budget",
    "BudgetError",
    "BudgetMatcher",
    "BudgetView",
    "StaticBudgets",
    "baseline_query",
    "budget_from_spec",
    "budget_problems",
    "budget_topics",
    "parse_budgets_yaml",
    "parse_duration_s",
    "parse_money",
    "parse_tokens",
    "plan_apply",
    "publish",
    "read_baseline",
    "read_budgets",
]
