"""The sink's reading of ClickHouse errors: retried, rows refused (bisected), or stop."""

from __future__ import annotations

import pytest
from clickhouse_connect.driver import exceptions as ch

from streams.sink import failures
from streams.sink.failures import Failure, classify

# what clickhouse-connect 1.12 raised for a row that violated a constraint (26.9 server)
REFUSED = (
    "Received ClickHouse exception, code: 469, server response: Code: 469. DB::Exception: "
    "Constraint `c` for table x.chk (59692e79-8ea5-4872-82d4-c8ff257ca9e2) is violated at "
    "row 2. Expression: (k != 'refuse'). Column values: k = 'refuse'. (VIOLATED_CONSTRAINT) "
    "(for url http://127.0.0.1:52547) (version 26.9.2.1 (official build))"
)


def server_error(code: int, name: str = "X") -> ch.DatabaseError:
    text = f"Received ClickHouse exception, code: {code}, server response: Code: {code}. "
    return ch.DatabaseError(f"{text}DB::Exception: boom. ({name})", code=code, name=name)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (252, Failure.TRANSIENT),  # TOO_MANY_PARTS
        (241, Failure.TRANSIENT),  # MEMORY_LIMIT_EXCEEDED
        (202, Failure.TRANSIENT),  # TOO_MANY_SIMULTANEOUS_QUERIES
        (159, Failure.TRANSIENT),  # TIMEOUT_EXCEEDED
        (210, Failure.TRANSIENT),  # NETWORK_ERROR
        (394, Failure.TRANSIENT),  # QUERY_WAS_CANCELLED (server shutting down)
        (27, Failure.BAD_DATA),  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
        (376, Failure.BAD_DATA),  # CANNOT_PARSE_UUID
        (53, Failure.BAD_DATA),  # TYPE_MISMATCH
        (321, Failure.BAD_DATA),  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
        (469, Failure.BAD_DATA),  # VIOLATED_CONSTRAINT
        (60, Failure.FATAL),  # UNKNOWN_TABLE
        (497, Failure.FATAL),  # ACCESS_DENIED
        (516, Failure.FATAL),  # AUTHENTICATION_FAILED
        (62, Failure.FATAL),  # SYNTAX_ERROR
        (395, Failure.FATAL),  # FUNCTION_THROW_IF_VALUE_IS_NON_ZERO
    ],
)
def test_classified_by_clickhouses_error_code(code: int, expected: Failure) -> None:
    assert classify(server_error(code)) is expected


def test_the_code_is_read_from_the_message_when_not_carried() -> None:
    assert classify(ch.DatabaseError(REFUSED)) is Failure.BAD_DATA
    assert failures.error_code(ch.DatabaseError(REFUSED)) == 469


def test_the_code_of_a_cause_counts() -> None:
    outer = RuntimeError("wrapped")
    outer.__cause__ = server_error(252)
    assert classify(outer) is Failure.TRANSIENT


@pytest.mark.parametrize(
    "exc",
    [
        ch.OperationalError("Error HTTPConnectionPool: Connection refused executing HTTP request"),
        ch.StreamFailureError("stream failed"),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError("timed out"),
        ch.DatabaseError("HTTP driver received HTTP status 503"),  # a proxy, no code
    ],
)
def test_no_answer_is_transient(exc: BaseException) -> None:
    assert classify(exc) is Failure.TRANSIENT


@pytest.mark.parametrize(
    "exc",
    [
        ch.ProgrammingError("Unrecognized column 'zz' in table x.src"),  # client-side, our bug
        ValueError("our own bug"),
        KeyError("x"),
    ],
)
def test_errors_that_are_not_clickhouses_answer_stop(exc: BaseException) -> None:
    assert classify(exc) is Failure.FATAL


def test_reason_is_clickhouses_words_without_url_or_version() -> None:
    text = failures.reason(ch.DatabaseError(REFUSED, code=469))
    assert text.startswith("ClickHouse error 469 (VIOLATED_CONSTRAINT): Constraint `c`")
    assert "Column values: k = 'refuse'" in text
    assert "http://" not in text and "version" not in text
    assert len(failures.reason(ch.DatabaseError("Code: 6. " + "x" * 5000))) < 600
