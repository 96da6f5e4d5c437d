"""What a failed ClickHouse request means for the sink: retry it, dead-letter rows, or stop.

clickhouse-connect carries ClickHouse's numeric error code on its errors (``Error.code``; the
message says ``Code: N`` too). Only failures that a later attempt of the SAME request can get
past are retried: the network, timeouts, a server busy merging, out of memory or shutting down.
Codes that name the data (a value ClickHouse cannot parse, convert or store, a violated
constraint) are the rows' fault: the writer bisects the block and dead-letters the rows
ClickHouse refuses. Everything else (unknown table, access denied, a syntax error: a broken
deployment or a bug) cannot get better by retrying and stops the sink with one clear error.
Pure, so that it is unit-tested without a server.
"""

from __future__ import annotations

import enum
import re

from clickhouse_connect.driver import exceptions as ch

TRANSIENT_CODES: dict[int, str] = {
    3: "UNEXPECTED_END_OF_FILE",
    23: "CANNOT_READ_FROM_ISTREAM",
    24: "CANNOT_WRITE_TO_OSTREAM",
    32: "ATTEMPT_TO_READ_AFTER_EOF",
    33: "CANNOT_READ_ALL_DATA",
    95: "CANNOT_READ_FROM_SOCKET",
    96: "CANNOT_WRITE_TO_SOCKET",
    159: "TIMEOUT_EXCEEDED",
    160: "TOO_SLOW",
    173: "CANNOT_ALLOCATE_MEMORY",
    198: "DNS_ERROR",
    201: "QUOTA_EXPIRED",
    202: "TOO_MANY_SIMULTANEOUS_QUERIES",
    203: "NO_FREE_CONNECTION",
    209: "SOCKET_TIMEOUT",
    210: "NETWORK_ERROR",
    216: "QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING",  # our previous attempt, still finishing
    225: "NO_ZOOKEEPER",
    236: "ABORTED",
    241: "MEMORY_LIMIT_EXCEEDED",
    242: "TABLE_IS_READ_ONLY",  # a replica that lost Keeper for a while
    243: "NOT_ENOUGH_SPACE",
    252: "TOO_MANY_PARTS",
    254: "NO_ACTIVE_REPLICAS",
    279: "ALL_CONNECTION_TRIES_FAILED",
    285: "TOO_FEW_LIVE_REPLICAS",
    286: "UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE",
    319: "UNKNOWN_STATUS_OF_INSERT",
    335: "BARRIER_TIMEOUT",
    364: "RECEIVED_ERROR_TOO_MANY_REQUESTS",
    384: "PART_IS_TEMPORARILY_LOCKED",
    394: "QUERY_WAS_CANCELLED",  # the server shutting down cancels what runs
    410: "EXTERNAL_SERVER_IS_NOT_RESPONDING",
    415: "ALL_REPLICAS_LOST",
    425: "SYSTEM_ERROR",
    439: "CANNOT_SCHEDULE_TASK",
    473: "DEADLOCK_AVOIDED",
    519: "NO_REMOTE_SHARD_AVAILABLE",
    999: "KEEPER_EXCEPTION",
    1000: "POCO_EXCEPTION",
}

BAD_DATA_CODES: dict[int, str] = {
    6: "CANNOT_PARSE_TEXT",
    19: "SIZE_OF_FIXED_STRING_DOESNT_MATCH",
    25: "CANNOT_PARSE_ESCAPE_SEQUENCE",
    26: "CANNOT_PARSE_QUOTED_STRING",
    27: "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
    38: "CANNOT_PARSE_DATE",
    41: "CANNOT_PARSE_DATETIME",
    53: "TYPE_MISMATCH",
    69: "ARGUMENT_OUT_OF_BOUND",
    70: "CANNOT_CONVERT_TYPE",
    72: "CANNOT_PARSE_NUMBER",
    117: "INCORRECT_DATA",
    131: "TOO_LARGE_STRING_SIZE",
    248: "INVALID_PARTITION_VALUE",
    321: "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
    349: "CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN",
    376: "CANNOT_PARSE_UUID",
    407: "DECIMAL_OVERFLOW",
    441: "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING",
    467: "CANNOT_PARSE_BOOL",
    469: "VIOLATED_CONSTRAINT",
    691: "UNKNOWN_ELEMENT_OF_ENUM",
}

_CODE = re.compile(r"\bCode:\s*(\d+)")
_EXCEPTION = re.compile(r"Code:\s*\d+\.\s*(?:DB::Exception:\s*)?(.*)", re.DOTALL)
_URL = re.compile(r"\s*\(for url [^)]*\)")


class Failure(enum.Enum):
    TRANSIENT = "transient"  # retry the same request, with backoff
    BAD_DATA = "bad_data"  # some rows are refused: bisect, dead-letter them, store the rest
    FATAL = "fatal"  # stop the sink with one clear error


def error_code(exc: BaseException) -> int | None:
    """ClickHouse's error code carried by ``exc`` (or its causes), None for transport errors."""
    seen: BaseException | None = exc
    while seen is not None:
        code = getattr(seen, "code", None)
        if isinstance(code, int):
            return code
        match = _CODE.search(str(seen))
        if match:
            return int(match.group(1))
        seen = seen.__cause__
    return None


def classify(exc: BaseException) -> Failure:
    """What to do about ``exc``, raised by one ClickHouse request (see the module docstring)."""
    code = error_code(exc)
    if code is None:
        if isinstance(exc, ch.OperationalError | OSError | TimeoutError) or type(exc) is (
            ch.DatabaseError
        ):
            # no code: the request never got an answer (refused, reset, timed out), or an
            # answer without one (a proxy's 502/503): the server may come back
            return Failure.TRANSIENT
        return Failure.FATAL  # raised by the client before asking (our bug), or unknown
    if code in TRANSIENT_CODES:
        return Failure.TRANSIENT
    if code in BAD_DATA_CODES:
        return Failure.BAD_DATA
    return Failure.FATAL


def reason(exc: BaseException) -> str:
    """ClickHouse's own words for ``exc`` (no URL, no server version), one line, bounded."""
    text = str(exc)
    match = _EXCEPTION.search(text)
    found = match.group(1) if match else text
    found = ch.scrub_error_details(_URL.sub("", " ".join(found.split())))
    code = error_code(exc)
    name = BAD_DATA_CODES.get(code or -1) or TRANSIENT_CODES.get(code or -1)
    prefix = f"ClickHouse error {code}" + (f" ({name})" if name else "") if code else "ClickHouse"
    return f"{prefix}: {found[:500]}"
