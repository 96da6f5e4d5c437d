"""What a soak child's RSS is made of, sampled in the process itself (``soak --probe``).

A daemon thread writes one JSON line every ``every`` seconds: RSS, glibc's heap (in use by
malloc, free inside the heap, mmapped), CPython's allocated blocks, the garbage collector's
counts and the full collections so far (with what each freed), and for the worker the size of
every container its stage processors and state tables hold. So a rising RSS can be told apart:
live state (the containers grow), garbage waiting for a collection (blocks grow, then fall at a
full collection), or the allocator keeping freed memory (malloc's in-use flat, RSS up).

Started before the worker's or sink's code runs (``python -c "import loadtest.memprobe ...;
main()"``); it only reads (``len`` of containers, copied under the GIL), except that with
``garbage_at`` it runs one full collection at that time with ``gc.DEBUG_SAVEALL`` and writes
the types of what it found unreachable (a pause, for diagnosis only).
"""

from __future__ import annotations

import collections
import ctypes
import gc
import json
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _sizes(obj: Any) -> dict[str, int]:
    """len() of every container attribute of ``obj`` (slots or __dict__)."""
    names = list(getattr(obj, "__dict__", {}))
    for klass in type(obj).__mro__:
        names.extend(getattr(klass, "__slots__", ()))
    out: dict[str, int] = {}
    for name in names:
        value: Any = getattr(obj, name, None)
        sized = isinstance(value, dict | list | set | collections.deque)
        if sized or type(value).__name__ == "DedupMemory":
            out[name] = len(value)
    return out


def start(
    path: str, every: float = 10.0, garbage_at: float | None = None, worker: bool = False
) -> None:
    """Start the sampling thread; ``worker``: also track the worker's state (imports it: not
    in the sink, whose RSS would then hold faust too)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    tracked: dict[str, weakref.WeakSet[Any]] = collections.defaultdict(weakref.WeakSet)
    try:
        if not worker:
            raise ImportError("not the worker")
        from streams.processors import stage1, stage2
        from streams.worker import worker as worker_module

        for module, name in (
            (stage1, "PartitionAggregator"),
            (stage2, "BudgetTotals"),
            (worker_module, "Worker"),
        ):
            klass = getattr(module, name)
            original = klass.__init__

            def init(self: Any, *args: Any, _o: Any = original, _n: str = name, **kw: Any) -> None:
                _o(self, *args, **kw)
                tracked[_n].add(self)

            klass.__init__ = init
    except ImportError:  # the sink (or a base install without the worker)
        pass
    collections_log: list[dict[str, float]] = []
    gc_started: list[float] = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            gc_started[0] = time.monotonic()
        else:
            collections_log.append(
                {
                    "at_s": round(time.monotonic() - begin, 1),
                    "collected": info["collected"],
                    "pause_ms": round(1000 * (time.monotonic() - gc_started[0]), 1),
                }
            )

    gc.callbacks.append(on_gc)
    begin = time.monotonic()

    def sample() -> dict[str, Any]:
        info = libc.mallinfo2()
        row: dict[str, Any] = {
            "t_s": round(time.monotonic() - begin, 1),
            "rss_kib": _rss_kib(),
            "malloc_in_use_kib": info.uordblks // 1024,
            "malloc_free_kib": info.fordblks // 1024,
            "malloc_mmap_kib": info.hblkhd // 1024,
            "malloc_heap_kib": info.arena // 1024,
            "py_blocks": sys.getallocatedblocks(),
            "gc_count": gc.get_count(),
            "gc_full": list(collections_log),
        }
        for name, objects in tracked.items():
            totals: collections.Counter[str] = collections.Counter()
            for obj in list(objects):
                totals.update(_sizes(obj))
            row[name] = dict(totals)
        for w in list(tracked.get("Worker", ())):
            for table_name in ("table1", "table2"):
                table = getattr(w, table_name, None)
                if table is None:
                    continue
                values = list(table.data.values())
                row[table_name] = {"keys": len(values), "kib": sum(map(len, values)) // 1024}
        return row

    def loop() -> None:
        done_garbage = garbage_at is None
        with open(path, "a") as out:
            while True:
                time.sleep(every)
                try:
                    row = sample()
                    if not done_garbage and row["t_s"] >= (garbage_at or 0):
                        done_garbage = True
                        gc.set_debug(gc.DEBUG_SAVEALL)
                        gc.collect()
                        kinds = collections.Counter(type(o).__qualname__ for o in gc.garbage)
                        row["garbage"] = {"objects": len(gc.garbage), "top": kinds.most_common(25)}
                        gc.garbage.clear()
                        gc.set_debug(0)
                        gc.collect()  # what was saved is unreachable again: free it now
                    out.write(json.dumps(row, default=str) + "\n")
                    out.flush()
                except Exception as exc:  # a container changed while read: next time
                    out.write(json.dumps({"error": repr(exc)}) + "\n")

    threading.Thread(target=loop, name="memprobe", daemon=True).start()
