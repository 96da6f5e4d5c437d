"""One exception root for spendstream; third-party errors are re-raised as ours ``from exc``."""

from __future__ import annotations


class SpendstreamError(Exception):
    """Root of every error spendstream raises on purpose."""


class SettingsError(SpendstreamError):
    """Invalid configuration; carries every problem found, not just the first."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid settings:\n  - " + "\n  - ".join(self.problems))


class DecodeError(SpendstreamError):
    """Bytes that are not a valid token event: unknown fingerprint, truncated or corrupt."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class InvalidEventError(SpendstreamError, ValueError):
    """A decoded or user-built event whose values break the contract (e.g. negative tokens)."""


class LocalStackError(SpendstreamError):
    """The embedded Kafka or ClickHouse could not be installed, started or reached."""


class ClickHouseUnavailable(SpendstreamError):
    """ClickHouse did not answer (down, unreachable, or refusing the connection)."""


class MissingExtraError(SpendstreamError, ImportError):
    """A command needs packages of an extra that is not installed."""


def missing_extra(extra: str, package: str) -> MissingExtraError:
    """The one-line error of a command whose extra is missing."""
    return MissingExtraError(
        f"this needs {package}, which comes with an extra: pip install 'spendstream[{extra}]'"
    )


class ProducerError(SpendstreamError):
    """The Kafka producer could not be created or failed to deliver."""


class PricingError(SpendstreamError):
    """The price catalog is malformed."""


class MigrationError(SpendstreamError):
    """A ClickHouse migration failed or an applied migration was edited."""


class SinkError(SpendstreamError):
    """The ClickHouse sink cannot continue (not raised for bad input, which is dead-lettered)."""


class AuthError(SpendstreamError):
    """Credentials rejected, access denied or a server certificate not trusted.

    Retrying cannot help, so start-up checks raise it at once instead of waiting for a timeout.
    The message names the server and the settings to fix, never a secret.
    """


class KafkaUnreachableError(SpendstreamError):
    """No Kafka broker answered a start-up check in time (transient: the caller may wait)."""
