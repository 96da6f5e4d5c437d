"""The checker's ledger, held as columns of integers: millions of events in a few hundred MB.

A run of 1.5M events held as dicts of Python objects (and again as the reference model's
steps) took the checker to 6.8 GB and past its run's timeout. Here every acknowledged
message is a row of fixed-width columns (``array`` while loading, numpy once frozen): the
16 bytes of its id, where the broker put it, its integer fields, its strings as codes into
one table of distinct strings, its catalog price and whether the sink must accept it, both
computed once as it is loaded. An event is rebuilt as a dict only when asked for one
(``Ledger.acked[eid]``); the checker's sums, budget totals and expected alerts are computed
over the columns (``amounts``, ``counted``), exactly: integer sums, no floats.
"""

from __future__ import annotations

import json
import uuid
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from streams import events
from streams.budgets import SCOPE_FIELDS, Budget
from streams.pricing import PriceCatalog, default_catalog

#: string fields of the contract (None allowed for the optional ids), in column order
STRING_FIELDS: Final = (
    "org_id", "team_id", "user_id", "project_id", "api_key_id", "session_id", "client",
    "task_type", "provider", "model", "status",
)  # fmt: skip
#: integer fields that are never null
INT_FIELDS: Final = ("event_time", *events.TOKEN_FIELDS)
_TURN_NULL: Final = 1
_COST_NULL: Final = 2
MINUTE_MS: Final = 60_000
#: a numpy int64 sum is used only while n * max |value| stays below this; else Python ints
_SAFE: Final = 1 << 62

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


class Strings:
    """Distinct strings (and None, code 0) and their codes."""

    def __init__(self) -> None:
        self.values: list[str | None] = [None]
        self.codes: dict[str | None, int] = {None: 0}

    def code(self, value: str | None) -> int:
        found = self.codes.get(value)
        if found is None:
            found = self.codes[value] = len(self.values)
            self.values.append(value)
        return found


_DTYPES: Final = {"b": np.int8, "i": np.int32, "q": np.int64, "Q": np.uint64}
_ID_MASK: Final = (1 << 64) - 1


class Columns:
    """Append-only integer columns: an ``array`` tail while filling, moved into one numpy
    array per column when read (never both copies for long)."""

    def __init__(self, spec: Mapping[str, str]) -> None:
        self.spec = dict(spec)
        self.tails = {name: array(code) for name, code in self.spec.items()}
        self.heads = {name: np.zeros(0, _DTYPES[code]) for name, code in self.spec.items()}

    def __len__(self) -> int:
        name = next(iter(self.spec))
        return len(self.heads[name]) + len(self.tails[name])

    def np(self, name: str) -> Any:
        tail = self.tails[name]
        if len(tail):
            code = self.spec[name]
            self.heads[name] = np.concatenate(
                [self.heads[name], np.frombuffer(tail, dtype=_DTYPES[code])]
            )
            self.tails[name] = array(code)
        return self.heads[name]

    def get(self, name: str, i: int) -> int:
        head = self.heads[name]
        return int(head[i]) if i < len(head) else self.tails[name][i - len(head)]


class Frozen:
    """The numpy view of a ledger at one moment: per message (``m_*``) and per distinct
    acked id (``u(name)``, in order of first acknowledgement; each the first copy's)."""

    def __init__(self, ledger: Ledger) -> None:
        cols = ledger._cols
        hi, lo = cols.np("id_hi"), cols.np("id_lo")
        n = len(hi)
        order = np.lexsort((lo, hi))  # stable: equal ids keep load order
        shi, slo = hi[order], lo[order]
        new = np.ones(n, dtype=bool)
        if n:
            new[1:] = (shi[1:] != shi[:-1]) | (slo[1:] != slo[:-1])
        sorted_rank = np.cumsum(new) - 1  # per sorted message: the rank of its id
        firsts_sorted = order[new]  # per rank (sorted by id): its first message
        # ranks in order of first acknowledgement, as a dict's insertion order would be
        by_ack = np.argsort(firsts_sorted, kind="stable")
        rank_of_sorted = np.empty(len(firsts_sorted), dtype=np.int64)
        rank_of_sorted[by_ack] = np.arange(len(firsts_sorted))
        self.m_rank = np.empty(n, dtype=np.int64)  # per message: its distinct id's index
        self.m_rank[order] = rank_of_sorted[sorted_rank]
        self.u_first = firsts_sorted[by_ack]  # per distinct id: its first message
        self.sorted_hi, self.sorted_lo = shi[new], slo[new]
        self.sorted_to_u = rank_of_sorted
        self.m_partition = cols.np("partition")
        self.m_offset = cols.np("offset")
        self.m_ts = cols.np("ts")
        self.m_valid = cols.np("valid").astype(bool)
        self._cols = cols
        self._u: dict[str, Any] = {}

    def u(self, name: str) -> Any:
        """Column ``name`` of the distinct acked events (first copies), computed once."""
        found = self._u.get(name)
        if found is None:
            if name == "tokens":
                found = np.zeros(len(self.u_first), dtype=np.int64)
                for f in events.TOKEN_FIELDS:
                    if f != "reasoning_tokens":
                        found += self.u(f)
            else:
                found = self._cols.np(name)[self.u_first]
            self._u[name] = found
        return found

    def find(self, event_id: str) -> int | None:
        """The distinct-id index of ``event_id``, or None."""
        try:
            value = uuid.UUID(event_id).int
        except (ValueError, TypeError, AttributeError):
            return None
        hi, lo = np.uint64(value >> 64), np.uint64(value & _ID_MASK)
        left = int(np.searchsorted(self.sorted_hi, hi, side="left"))
        right = int(np.searchsorted(self.sorted_hi, hi, side="right"))
        if left == right:
            return None
        at = left + int(np.searchsorted(self.sorted_lo[left:right], lo))
        if at < right and self.sorted_lo[at] == lo:
            return int(self.sorted_to_u[at])
        return None


class Ledger:
    """What the producers saw: acked events (first copy by id), failed ids, the budgets.

    ``add_acked`` / ``add_failed`` as the producers report them (``load`` reads their
    files); ``acked`` (a read-only mapping id -> event, rebuilt on demand), ``unacked``,
    ``positions`` and ``acked_messages`` as before; ``frozen()`` the columns for sums.
    """

    def __init__(self, budgets: Iterable[Budget] = (), catalog: PriceCatalog | None = None) -> None:
        self.budgets: list[Budget] = list(budgets)
        self.catalog = catalog or default_catalog()
        self.strings = Strings()
        spec = {"id_hi": "Q", "id_lo": "Q", "partition": "i", "offset": "q", "ts": "q"}
        spec.update({f: "i" for f in STRING_FIELDS})
        spec.update({f: "q" for f in (*INT_FIELDS, "turn", "cost_nanos")})
        # nulls: turn / reported cost absent; cost: the catalog's price (reported first);
        # valid: the sink must accept it (problems() at its broker time, the cost bound)
        spec.update(labels="i", nulls="b", cost="q", source="i", valid="b")
        self._cols = Columns(spec)
        self._failed: list[str] = []
        self._frozen: Frozen | None = None
        self._positioned = 0

    # ------------------------------------------------------------------ filling

    @property
    def acked_messages(self) -> int:
        """Acknowledged messages, re-sends of one id included."""
        return len(self._cols)

    def add_acked(
        self, event: Mapping[str, Any], position: tuple[int, int, int] | None = None
    ) -> None:
        """One acknowledged message; ``position``: (partition, offset, broker time)."""
        self._frozen = None
        col = self._cols.tails
        value = uuid.UUID(str(event["event_id"])).int
        col["id_hi"].append(value >> 64)
        col["id_lo"].append(value & _ID_MASK)
        partition, offset, ts = position if position is not None else (-1, -1, -1)
        self._positioned += position is not None
        col["partition"].append(partition)
        col["offset"].append(offset)
        col["ts"].append(ts)
        code = self.strings.code
        for f in STRING_FIELDS:
            col[f].append(code(event.get(f)))
        labels = event.get("labels") or {}
        col["labels"].append(code(json.dumps(labels, sort_keys=True)) if labels else 0)
        for f in INT_FIELDS:
            col[f].append(int(event[f]))
        turn, reported = event.get("turn"), event.get("cost_nanos")
        col["turn"].append(0 if turn is None else int(turn))
        col["cost_nanos"].append(0 if reported is None else int(reported))
        col["nulls"].append((turn is None) * _TURN_NULL | (reported is None) * _COST_NULL)
        price = self.catalog.price(event)
        col["cost"].append(price.cost_nanos)
        col["source"].append(code(price.source))
        col["valid"].append(accepted(event, ts, price.cost_nanos))

    def add_failed(self, event_id: str) -> None:
        self._failed.append(str(event_id))
        self._frozen = None

    @classmethod
    def load(cls, *paths: Any, budgets: Iterable[Budget] = ()) -> Ledger:
        """The ledger of one or more ``LedgerWriter`` files (several producer processes)."""
        ledger = cls(budgets=budgets)
        for path in paths:
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    if not line.endswith("\n"):
                        break  # a writer killed mid-line: that event was not recorded
                    entry = json.loads(line)
                    if "e" in entry:
                        where = entry.get("at")
                        ledger.add_acked(entry["e"], tuple(where) if where else None)
                    else:
                        ledger.add_failed(entry["f"])
        return ledger

    # ------------------------------------------------------------------ reading

    def frozen(self) -> Frozen:
        if self._frozen is None:
            self._frozen = Frozen(self)
        return self._frozen

    @property
    def acked(self) -> AckedView:
        return AckedView(self)

    @property
    def unacked(self) -> set[str]:
        """Ids whose send failed and that were never acknowledged."""
        frozen = self.frozen()
        return {eid for eid in self._failed if frozen.find(eid) is None}

    @property
    def positions(self) -> PositionsView:
        return PositionsView(self)

    @property
    def fully_positioned(self) -> bool:
        return self.acked_messages > 0 and self._positioned == self.acked_messages

    def event(self, message: int) -> events.Event:
        """The event of acked message ``message`` as the producer saw it."""
        values, get = self.strings.values, self._cols.get
        out: dict[str, Any] = {"event_id": self.event_id(message)}
        for f in STRING_FIELDS:
            out[f] = values[get(f, message)]
        for f in INT_FIELDS:
            out[f] = get(f, message)
        nulls = get("nulls", message)
        out["turn"] = None if nulls & _TURN_NULL else get("turn", message)
        out["cost_nanos"] = None if nulls & _COST_NULL else get("cost_nanos", message)
        labels = get("labels", message)
        out["labels"] = json.loads(values[labels] or "{}") if labels else {}
        return {f: out[f] for f in _EVENT_ORDER}

    def event_id(self, message: int) -> str:
        get = self._cols.get
        return str(uuid.UUID(int=get("id_hi", message) << 64 | get("id_lo", message)))

    def produced_ts(self, event_id: str) -> int | None:
        """The broker time of the first acknowledged copy of ``event_id``."""
        frozen = self.frozen()
        found = frozen.find(event_id)
        if found is None:
            return None
        ts = int(frozen.m_ts[frozen.u_first[found]])
        return ts if ts >= 0 else None

    # ------------------------------------------------------------------ sums

    def match(self, budget: Budget) -> BoolArray:
        """Per distinct acked event: does ``budget``'s scope take it (``Budget.matches``)."""
        frozen = self.frozen()
        n = len(frozen.u_first)
        mask = np.ones(n, dtype=bool)
        for name in SCOPE_FIELDS:
            want = getattr(budget, name)
            if want is None:
                continue
            code = self.strings.codes.get(want)
            if code is None:
                return np.zeros(n, dtype=bool)
            mask &= frozen.u(name) == code
        if budget.labels:
            labels = frozen.u("labels")
            taken = np.zeros(len(self.strings.values), dtype=bool)
            for c in np.unique(labels[mask]).tolist():
                have = json.loads(self.strings.values[c] or "{}") if c else {}
                taken[c] = all(have.get(k) == v for k, v in budget.labels.items())
            mask &= taken[labels]
        return mask

    def amounts(self, budget: Budget) -> dict[int, int]:
        """``budget_amounts`` over the distinct acked events: total per calendar period start
        in the budget's unit, events from ``counting_from`` on (rolling budgets: {})."""
        if budget.period == "rolling":
            return {}
        from streams.processors.periods import calendar_period

        frozen = self.frozen()
        mask = self.match(budget) & (frozen.u("event_time") >= budget.counting_from)
        times = frozen.u("event_time")[mask]
        values = frozen.u("tokens" if budget.unit == "tokens" else "cost")[mask]

        def start(ms: int) -> int:
            return calendar_period(ms, budget.period, budget.timezone).start

        return group_sum(period_starts(times, start), values)


def accepted(event: Mapping[str, Any], ts: int, cost: int) -> bool:
    """Does the sink accept ``event`` arriving at broker time ``ts`` (the reference model's
    rule: ``problems`` finds nothing, the cost is within the bound)."""
    return not events.problems(event, ts) and cost <= events.MAX_COST_NANOS


class AckedView(Mapping[str, events.Event]):
    """Ledger.acked: distinct acked id -> its first copy, in order of acknowledgement."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._frozen = ledger.frozen()

    def __len__(self) -> int:
        return len(self._frozen.u_first)

    def __iter__(self) -> Iterator[str]:
        for message in self._frozen.u_first:
            yield self._ledger.event_id(int(message))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._frozen.find(key) is not None

    def __getitem__(self, key: str) -> events.Event:
        found = self._frozen.find(key)
        if found is None:
            raise KeyError(key)
        return self._ledger.event(int(self._frozen.u_first[found]))

    def values(self) -> Iterator[events.Event]:  # type: ignore[override]
        for message in self._frozen.u_first:
            yield self._ledger.event(int(message))


class PositionsView(Sequence[tuple[int, int, int, str]]):
    """Ledger.positions: (partition, offset, broker time, event_id) of each positioned
    message, in order of acknowledgement."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._index = np.flatnonzero(ledger._cols.np("partition") >= 0)

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> tuple[int, int, int, str]:  # type: ignore[override]
        m = int(self._index[i])
        get = self._ledger._cols.get
        return (get("partition", m), get("offset", m), get("ts", m), self._ledger.event_id(m))


_EVENT_ORDER: Final = (
    "event_id", "event_time", "org_id", "team_id", "user_id", "project_id", "api_key_id",
    "session_id", "turn", "client", "task_type", "provider", "model", *events.TOKEN_FIELDS,
    "cost_nanos", "status", "labels",
)  # fmt: skip


def period_starts(times: IntArray, start: Any) -> IntArray:
    """``start(ms)`` of every time, asked once per distinct minute: a minute whose first
    and last millisecond have the same period start lies inside one period (periods are
    intervals); any other minute is asked millisecond by millisecond."""
    if len(times) == 0:
        return np.zeros(0, dtype=np.int64)
    minutes, inverse = np.unique(times // MINUTE_MS, return_inverse=True)
    per_minute = np.empty(len(minutes), dtype=np.int64)
    split: list[int] = []
    for i, m in enumerate(minutes.tolist()):
        first, last = start(m * MINUTE_MS), start(m * MINUTE_MS + MINUTE_MS - 1)
        per_minute[i] = first
        if first != last:
            split.append(i)
    out = per_minute[inverse]
    for i in split:
        where = np.flatnonzero(inverse == i)
        out[where] = [start(int(t)) for t in times[where].tolist()]
    return out


def group_sum(keys: IntArray, values: IntArray) -> dict[int, int]:
    """{key: sum of its values}, exact (int64 only while it cannot overflow)."""
    if len(keys) == 0:
        return {}
    uniq, inverse = np.unique(keys, return_inverse=True)
    biggest = int(np.abs(values).max()) if len(values) else 0
    if biggest * len(values) < _SAFE:
        order = np.argsort(inverse, kind="stable")
        bounds = np.flatnonzero(np.r_[True, np.diff(inverse[order]) != 0])
        sums = np.add.reduceat(values[order].astype(np.int64), bounds)
        return dict(zip(uniq.tolist(), sums.tolist(), strict=True))
    out: dict[int, int] = {}
    for k, v in zip(keys.tolist(), values.tolist(), strict=True):
        out[k] = out.get(k, 0) + v
    return out
