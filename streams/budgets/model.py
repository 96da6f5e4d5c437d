"""The budget model: scope matching, validation, YAML parsing and a fast matcher for the hot path.

A budget's scope is a conjunction: every scope field that is set must equal the event's value
(labels: every listed label must be present with that value). Budgets are stored as Avro
``Budget`` records (schemas/budget.avsc) on the compacted budgets topic, keyed by budget_id.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import yaml

from streams.errors import SpendstreamError
from streams.events import TASK_TYPES
from streams.processors.periods import MINUTE_MS, PERIODS, _zone

SCOPE_FIELDS: Final = ("org_id", "team_id", "user_id", "project_id", "model", "client", "task_type")
#: YAML/CLI short names for scope fields.
SCOPE_ALIASES: Final = {
    "org": "org_id",
    "team": "team_id",
    "user": "user_id",
    "project": "project_id",
    "model": "model",
    "client": "client",
    "task_type": "task_type",
    "task": "task_type",
}
UNITS: Final = ("usd_nanos", "tokens")
MODES: Final = ("alert", "block")
DEFAULT_THRESHOLDS: Final = (50, 80, 100)
NANOS_PER_USD: Final = 1_000_000_000
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$")
_DURATION = re.compile(r"^(\d+)\s*(m|min|h|d)$")
#: The largest limit a budget may have: the Avro ``long`` it travels as (nano-USD or tokens).
MAX_LIMIT: Final = (1 << 63) - 1
#: The longest rolling window: a year and a day (longer windows are calendar budgets' job).
MAX_ROLLING_WINDOW_S: Final = 366 * 86_400
#: YAML values a scalar setting (id, scope value, amount, zone...) may be: never a list or
#: mapping, whose str() or repr() could expand an alias bomb (``&a [*b, *b, ...]``).
_SCALARS: Final = (str, int, float, bool, type(None))


class BudgetError(SpendstreamError, ValueError):
    """A budget definition that cannot be used; lists every problem found."""


@dataclasses.dataclass(frozen=True)
class Budget:
    budget_id: str
    period: str
    limit: int
    unit: str = "usd_nanos"
    timezone: str = "UTC"
    rolling_window_s: int | None = None
    org_id: str | None = None
    team_id: str | None = None
    user_id: str | None = None
    project_id: str | None = None
    model: str | None = None
    client: str | None = None
    task_type: str | None = None
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    thresholds_pct: tuple[int, ...] = DEFAULT_THRESHOLDS
    mode: str = "alert"
    forecast: bool = False
    description: str | None = None
    created_at: int = 0
    updated_at: int = 0

    def __post_init__(self) -> None:
        found = budget_problems(self)
        if found:
            raise BudgetError(f"budget {self.budget_id!r}: " + "; ".join(found))

    @property
    def scope(self) -> dict[str, str]:
        """The set scope fields (plus ``label.<name>`` entries), for alerts and display."""
        out = {f: v for f in SCOPE_FIELDS if (v := getattr(self, f)) is not None}
        out.update({f"label.{k}": v for k, v in sorted(self.labels.items())})
        return out

    @property
    def window_ms(self) -> int:
        return (self.rolling_window_s or 0) * 1000

    @property
    def counting_from(self) -> int:
        """First minute the stream counts for this budget; before it, ClickHouse's baseline.

        The minute after creation (minute-aligned, so the stream's per-minute aggregates and
        the baseline query split the period at the same instant).
        """
        if not self.created_at:
            return 0
        return self.created_at - self.created_at % MINUTE_MS + MINUTE_MS

    def matches(self, event: Mapping[str, Any]) -> bool:
        for name in SCOPE_FIELDS:
            want = getattr(self, name)
            if want is not None and event.get(name) != want:
                return False
        if self.labels:
            have = event.get("labels") or {}
            return all(have.get(k) == v for k, v in self.labels.items())
        return True

    def amount(self, cost_nanos: int, tokens: int) -> int:
        return tokens if self.unit == "tokens" else cost_nanos

    def to_record(self) -> dict[str, Any]:
        """The Avro ``Budget`` record."""
        record = dataclasses.asdict(self)
        record["labels"] = dict(self.labels)
        record["thresholds_pct"] = list(self.thresholds_pct)
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Budget:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in record.items() if k in fields}
        values["thresholds_pct"] = tuple(values.get("thresholds_pct") or DEFAULT_THRESHOLDS)
        values["labels"] = dict(values.get("labels") or {})
        return cls(**values)

    @functools.cached_property
    def total_version(self) -> str:
        """Digest of what decides WHICH events count (scope, period, zone, window): a change
        starts a new total; a limit or mode change keeps it."""
        counted = {f: getattr(self, f) for f in (*SCOPE_FIELDS, *_PERIOD_FIELDS)}
        counted["labels"] = dict(sorted(self.labels.items()))
        return _digest(counted)

    @functools.cached_property
    def definition_version(self) -> str:
        """Digest of the whole definition but its timestamps and its description: part of
        every threshold alert id, so a changed limit or threshold list is evaluated afresh
        (and a re-worded description is not: it decides nothing)."""
        record = self.to_record()
        for name in ("created_at", "updated_at", "description"):
            record.pop(name)
        return _digest(record)

    def same_definition(self, other: Budget) -> bool:
        """Equal apart from timestamps (an unchanged ``apply`` publishes nothing)."""
        a, b = self.to_record(), other.to_record()
        for name in ("created_at", "updated_at"):
            a.pop(name)
            b.pop(name)
        return a == b


_PERIOD_FIELDS: Final = ("period", "timezone", "rolling_window_s")


def _digest(values: Mapping[str, Any]) -> str:
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def budget_problems(budget: Budget) -> list[str]:
    """Every way ``budget`` is unusable; empty when valid."""
    found: list[str] = []
    if not isinstance(budget.budget_id, str) or not _ID.match(budget.budget_id):
        found.append("budget_id must be 1-128 of letters, digits and ._:@/- (no spaces)")
    if budget.period not in PERIODS:
        found.append(f"period must be one of {', '.join(PERIODS)}")
    if budget.period == "rolling":
        window = budget.rolling_window_s
        if not isinstance(window, int) or window * 1000 < MINUTE_MS:
            found.append("a rolling budget needs rolling_window_s >= 60")
        elif window > MAX_ROLLING_WINDOW_S:
            found.append(f"rolling_window_s must be at most {MAX_ROLLING_WINDOW_S} (366 days)")
    elif budget.rolling_window_s is not None:
        found.append("rolling_window_s is only for period: rolling")
    if not isinstance(budget.limit, int) or isinstance(budget.limit, bool) or budget.limit <= 0:
        found.append("limit must be a positive integer (nano-USD or tokens)")
    elif budget.limit > MAX_LIMIT:
        found.append(f"limit must be at most {MAX_LIMIT:,} (a signed 64-bit integer)")
    if budget.description is not None and not isinstance(budget.description, str):
        found.append("description must be a string")
    if budget.unit not in UNITS:
        found.append(f"unit must be one of {', '.join(UNITS)}")
    if budget.mode not in MODES:
        found.append(f"mode must be one of {', '.join(MODES)}")
    try:
        if not isinstance(budget.timezone, str):
            raise TypeError(budget.timezone)
        _zone(budget.timezone)
    except Exception:
        found.append(f"unknown time zone {_show(budget.timezone)}")
    thresholds = budget.thresholds_pct
    if not thresholds or any(
        not isinstance(t, int) or isinstance(t, bool) or not 0 < t <= 1000 for t in thresholds
    ):
        found.append("thresholds_pct must be integers in 1..1000")
    elif list(thresholds) != sorted(set(thresholds)):
        found.append("thresholds_pct must be strictly increasing")
    if budget.task_type is not None and budget.task_type not in TASK_TYPES:
        found.append(f"task_type must be one of {', '.join(TASK_TYPES)}")
    for name in SCOPE_FIELDS:
        value = getattr(budget, name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            found.append(f"{name} must be a non-empty string when set")
    if budget.mode == "block" and not any(
        getattr(budget, f) for f in ("org_id", "team_id", "user_id")
    ):
        found.append("a block-mode budget must name an org, team or user (what gets blocked)")
    return found


# ---------------------------------------------------------------------------- YAML / CLI input


def _show(raw: Any) -> str:
    """``raw`` for an error message: a short repr of a scalar, only the type of anything else
    (the repr of a YAML alias bomb would never end)."""
    if isinstance(raw, _SCALARS):
        text = repr(raw)
        return text if len(text) <= 80 else text[:77] + "..."
    return f"a {type(raw).__name__}"


def _scalar_text(raw: Any, what: str) -> str:
    if not isinstance(raw, _SCALARS):
        raise BudgetError(f"{what} must be a single value, not {_show(raw)}")
    return str(raw)


def _bounded(value: Decimal, raw: Any, what: str) -> int:
    """An exact integer from ``value``, refused unless in 1..MAX_LIMIT (Decimal arithmetic on
    1e999999 overflows, and int() of a huge integer is slow or refused)."""
    if not value.is_finite() or value != value.to_integral_value() or value <= 0:
        raise BudgetError(f"{what} must be a positive integer: {_show(raw)}")
    if value > MAX_LIMIT:
        raise BudgetError(f"{what} must be at most {MAX_LIMIT:,}: {_show(raw)}")
    return int(value)


def _decimal(text: str, raw: Any, what: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise BudgetError(f"not {what}: {_show(raw)}") from exc
    if not value.is_finite() or value.adjusted() > 30:  # beyond any limit, and keeps * exact
        raise BudgetError(f"{what} must be finite and at most {MAX_LIMIT:,}: {_show(raw)}")
    return value


def parse_money(raw: Any) -> int:
    """'$1,250.50', '1250.5', 12 -> nano-USD (exact, via Decimal)."""
    text = _scalar_text(raw, "an amount of USD").strip().replace(",", "").replace("_", "")
    if text.startswith("$"):
        text = text[1:]
    nanos = _decimal(text, raw, "an amount of USD") * NANOS_PER_USD
    if nanos != nanos.to_integral_value() or nanos <= 0:
        raise BudgetError(f"USD amount must be positive with at most 9 decimals: {_show(raw)}")
    return _bounded(nanos, raw, "a limit in nano-USD")


def parse_tokens(raw: Any) -> int:
    """'2M', '500k', 1000000 -> tokens."""
    text = _scalar_text(raw, "a token count").strip().lower().replace(",", "").replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000, "b": 1_000_000_000}.get(text[-1:], 1)
    if scale != 1:
        text = text[:-1]
    value = _decimal(text, raw, "a token count") * scale
    return _bounded(value, raw, "token count")


def parse_duration_s(raw: Any) -> int:
    """'90m', '6h', '1d' -> seconds."""
    match = _DURATION.match(_scalar_text(raw, "a duration").strip().lower())
    if not match or len(match.group(1)) > 12:
        raise BudgetError(f"not a duration like 30m, 6h or 1d: {_show(raw)}")
    number, unit = int(match.group(1)), match.group(2)
    return number * {"m": 60, "min": 60, "h": 3600, "d": 86400}[unit]


def budget_from_spec(spec: Mapping[str, Any], now_ms: int = 0) -> Budget:
    """A Budget from a YAML/CLI mapping (friendly names: scope, limit_usd, rolling: 6h...).

    Accepted keys: id, description, scope {org, team, user, project, model, client,
    task_type, labels{}}, period (day|week|month|rolling), timezone, window (rolling length,
    e.g. 6h), limit_usd or limit_tokens, thresholds (list of %), mode (alert|block), forecast.
    """
    known = {
        "id",
        "budget_id",
        "description",
        "scope",
        "period",
        "timezone",
        "window",
        "limit_usd",
        "limit_tokens",
        "thresholds",
        "mode",
        "forecast",
    }
    unknown = sorted((k for k in spec if k not in known), key=str)
    problems: list[str] = [f"unknown key {_show(k)}" for k in unknown]
    budget_id = spec.get("id", spec.get("budget_id"))
    if not isinstance(budget_id, _SCALARS):
        problems.append(f"id must be a single value, not {_show(budget_id)}")
        budget_id = None
    for name in ("description", "period", "timezone", "mode"):
        if not isinstance(spec.get(name), _SCALARS):
            problems.append(f"{name} must be a single value, not {_show(spec[name])}")
    if problems:
        raise BudgetError(f"budget {_show(budget_id)}: " + "; ".join(problems))
    values: dict[str, Any] = {
        "budget_id": budget_id,
        "description": spec.get("description"),
        "period": spec.get("period", "month"),
        "timezone": spec.get("timezone", "UTC"),
        "mode": spec.get("mode", "alert"),
        "forecast": bool(spec.get("forecast", False)),
        "created_at": now_ms,
        "updated_at": now_ms,
    }
    scope = spec.get("scope") or {}
    if not isinstance(scope, Mapping):
        problems.append("scope must be a mapping")
        scope = {}
    labels: dict[str, str] = {}
    for key, value in scope.items():
        if key == "labels":
            if not isinstance(value, Mapping):
                problems.append("scope.labels must be a mapping")
                continue
            for name, wanted in value.items():
                if isinstance(name, _SCALARS) and isinstance(wanted, _SCALARS):
                    labels[str(name)] = str(wanted)
                else:
                    problems.append(f"scope.labels.{_show(name)} must be a single value")
        elif not isinstance(value, _SCALARS):
            problems.append(f"scope.{_show(key)} must be a single value, not {_show(value)}")
        elif isinstance(key, str) and key.startswith("label.") and len(key) > len("label."):
            labels[key[len("label.") :]] = str(value)
        elif isinstance(key, str) and (key in SCOPE_ALIASES or key in SCOPE_FIELDS):
            values[SCOPE_ALIASES.get(key) or key] = str(value)
        else:
            problems.append(f"unknown scope field {_show(key)}")
    values["labels"] = labels
    try:
        if "limit_usd" in spec and "limit_tokens" in spec:
            problems.append("give limit_usd or limit_tokens, not both")
        elif "limit_usd" in spec:
            values["limit"], values["unit"] = parse_money(spec["limit_usd"]), "usd_nanos"
        elif "limit_tokens" in spec:
            values["limit"], values["unit"] = parse_tokens(spec["limit_tokens"]), "tokens"
        else:
            problems.append("limit_usd or limit_tokens is required")
        if values["period"] == "rolling":
            if "window" not in spec:
                problems.append("a rolling budget needs window (e.g. 6h)")
            else:
                values["rolling_window_s"] = parse_duration_s(spec["window"])
        elif "window" in spec:
            problems.append("window is only for period: rolling")
    except BudgetError as exc:
        problems.append(str(exc))
    thresholds = spec.get("thresholds", list(DEFAULT_THRESHOLDS))
    if not isinstance(thresholds, Sequence) or isinstance(thresholds, str):
        problems.append("thresholds must be a list of percents")
    else:
        values["thresholds_pct"] = tuple(thresholds)
    if problems:
        raise BudgetError(f"budget {budget_id!r}: " + "; ".join(problems))
    return Budget(**values)


def parse_budgets_yaml(text: str, now_ms: int = 0) -> list[Budget]:
    """``budgets: [...]`` (or a bare list) -> Budgets; every problem of every entry at once."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BudgetError(f"budgets file is not valid YAML: {exc}") from exc
    except RecursionError as exc:  # PyYAML composes nested collections recursively
        raise BudgetError("budgets file is not valid YAML: nested too deeply") from exc
    entries = doc.get("budgets") if isinstance(doc, Mapping) else doc
    if not isinstance(entries, list):
        raise BudgetError("budgets file must contain a list under 'budgets:'")
    budgets: list[Budget] = []
    problems: list[str] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            problems.append(f"budgets[{index}] is not a mapping")
            continue
        try:
            budgets.append(budget_from_spec(entry, now_ms))
        except BudgetError as exc:
            problems.append(f"budgets[{index}]: {exc}")
    ids = [b.budget_id for b in budgets]
    problems.extend(
        f"duplicate budget id {i!r}" for i in sorted({i for i in ids if ids.count(i) > 1})
    )
    if problems:
        raise BudgetError("invalid budgets file:\n  - " + "\n  - ".join(problems))
    return budgets


# ---------------------------------------------------------------------------- hot-path matching

#: The event fields a budget scope can look at, in signature order (labels last).
SIGNATURE_FIELDS: Final = SCOPE_FIELDS


class BudgetMatcher:
    """Which budgets apply to an event, memoised by the event's scope signature.

    The signature is the tuple of scope fields plus the labels; most traffic repeats a few
    thousand signatures, so matching costs one dict lookup per aggregate row, not a scan of
    every budget.
    """

    def __init__(self, budgets: Iterable[Budget]) -> None:
        self.budgets: tuple[Budget, ...] = tuple(sorted(budgets, key=lambda b: b.budget_id))
        self._labelled = any(b.labels for b in self.budgets)
        self._cache: dict[tuple[Any, ...], tuple[Budget, ...]] = {}
        # the cache is keyed by the fields and label names some budget filters on only, so
        # signatures differing in fields no budget looks at share one entry
        self._used = tuple(
            i
            for i, name in enumerate(SIGNATURE_FIELDS)
            if any(getattr(b, name) is not None for b in self.budgets)
        )
        self._label_names = tuple(sorted({k for b in self.budgets for k in b.labels}))
        # a whole signature's used fields in one C call (itemgetter of one index gives a
        # value, not a tuple: then the general path)
        self._pick = operator.itemgetter(*self._used) if len(self._used) > 1 else None

    def __len__(self) -> int:
        return len(self.budgets)

    def uses_labels(self) -> bool:
        return self._labelled

    def match_signature(
        self, signature: tuple[Any, ...], labels: Mapping[str, str] | None = None
    ) -> tuple[Budget, ...]:
        """``signature`` = values of SIGNATURE_FIELDS (+ a frozen label tuple when labelled)."""
        if self._pick is not None and len(signature) == len(SIGNATURE_FIELDS):
            key: tuple[Any, ...] = self._pick(signature)
        else:
            size = len(signature)
            key = tuple(signature[i] if i < size else None for i in self._used)
        if self._label_names:
            key = (*key, *map((labels or {}).get, self._label_names))
        found = self._cache.get(key)
        if found is None:
            event = dict(zip(SIGNATURE_FIELDS, signature, strict=False))
            event["labels"] = labels or {}
            found = tuple(b for b in self.budgets if b.matches(event))
            if len(self._cache) > 200_000:
                self._cache.clear()
            self._cache[key] = found
        return found
