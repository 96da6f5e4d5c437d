"""Start-up checks: wrong credentials, an untrusted certificate or the wrong security protocol
become ONE clear AuthError at once, instead of librdkafka retrying (and logging) forever.

librdkafka treats a failed SASL login or TLS handshake as a transient broker error: a client
with a wrong password retries every second, its produce calls queue up and a consumer never
gets a message. So every client start (services, SDK) first asks for metadata with a short
lived admin client that watches its own error and log callbacks, and stops at the first
error that retrying cannot fix. Messages name the server, the user and the settings to fix,
never a secret.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ClusterMetadata

from streams.errors import AuthError, KafkaUnreachableError, SettingsError
from streams.settings import Settings, env_name

#: a client speaking PLAINTEXT to a TLS listener (or the reverse) is dropped in this state
_HANDSHAKE_STATE = "in state APIVERSION_QUERY"
#: that many such drops in a row and no answer: the security protocol is wrong
HANDSHAKE_DROPS = 3
_AUTH_CODES = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED}
#: TLS errors that say the certificate was refused (not a dropped connection mid-handshake,
#: which a restarting broker also causes)
_UNTRUSTED = ("certificate", "verify failed", "alert")
#: TLS spoken to a listener that does not speak it
_PLAINTEXT_LISTENER = ("wrong version number", "packet length too long")
_DENIED_CODES = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
}


class _Watch(logging.Handler):
    """Collects a client's error callbacks and log lines while the check runs."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.errors: list[KafkaError] = []
        self.handshake_drops = 0

    def on_error(self, error: KafkaError) -> None:
        self.errors.append(error)

    def emit(self, record: logging.LogRecord) -> None:
        if _HANDSHAKE_STATE in record.getMessage():
            self.handshake_drops += 1


def _servers(settings: Settings) -> str:
    return str(settings.kafka_client_config()["bootstrap.servers"])


def auth_failure(settings: Settings, error: KafkaError) -> AuthError | None:
    """Our AuthError for a librdkafka error that retrying cannot fix, else None."""
    code, text = error.code(), error.str()
    servers = _servers(settings)
    if code in _AUTH_CODES:
        return AuthError(
            f"Kafka at {servers} rejected the login of user "
            f"{settings.kafka_sasl_username!r} ({settings.kafka_sasl_mechanism}): check "
            f"{env_name('kafka_sasl_username')} and {env_name('kafka_sasl_password')} ({text})"
        )
    tls_error = code in (KafkaError._SSL, KafkaError._TRANSPORT)
    if tls_error and any(word in text for word in _PLAINTEXT_LISTENER):
        return _protocol_error(settings)
    if tls_error and any(word in text for word in _UNTRUSTED):
        return AuthError(
            f"Kafka at {servers}: the TLS handshake failed; if the broker's certificate is not "
            f"trusted, set {env_name('kafka_tls_ca')} to the CA that signed it ({text})"
        )
    if code in _DENIED_CODES:
        return AuthError(
            f"Kafka at {servers} denied user {settings.kafka_sasl_username!r}: {text} "
            "(its ACLs do not allow this)"
        )
    return None


def denied(settings: Settings, exc: KafkaException) -> AuthError | None:
    """AuthError for a KafkaException carrying an authorization or authentication error."""
    error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    return None if error is None else auth_failure(settings, error)


def _protocol_error(settings: Settings) -> AuthError:
    return AuthError(
        f"Kafka at {_servers(settings)} closes every connection during the handshake: its "
        f"listener expects another security protocol than {settings.kafka_security_protocol} "
        f"(set {env_name('kafka_security_protocol')}; the secure local stack's clients need "
        f"SASL_SSL, see <{env_name('home')}>/secure/*.env)"
    )


def kafka_metadata(
    settings: Settings, timeout: float | None = None, topic: str | None = None
) -> ClusterMetadata:
    """Cluster metadata (of ``topic`` only, if given) from whatever Kafka ``settings`` point at.

    Raises AuthError as soon as the login, the TLS handshake or the protocol is wrong, and
    KafkaUnreachableError when no broker answered within ``timeout`` (default: the
    ``kafka_check_timeout_s`` setting).
    """
    limit = settings.kafka_check_timeout_s if timeout is None else timeout
    watch = _Watch()
    # a logger of its own (not registered, not propagating): librdkafka's lines of this
    # client are only evidence for the check, never output
    logger = logging.Logger(f"{__name__}.librdkafka", logging.DEBUG)
    logger.propagate = False
    logger.addHandler(watch)
    config: dict[str, Any] = {
        **settings.kafka_client_config(),
        "error_cb": watch.on_error,
        "logger": logger,
    }
    try:
        client = AdminClient(config)
    except KafkaException as exc:
        raise SettingsError([f"Kafka client settings rejected by librdkafka: {exc}"]) from exc
    deadline = time.monotonic() + limit
    last: KafkaException | None = None
    while True:
        remaining = deadline - time.monotonic()
        try:
            metadata = client.list_topics(topic, timeout=max(0.05, min(0.5, remaining)))
            if metadata.brokers:
                return metadata
        except KafkaException as exc:
            last = exc
        client.poll(0)  # serves error_cb and the logger
        for error in watch.errors:
            failure = auth_failure(settings, error)
            if failure is not None:
                raise failure from KafkaException(error)
        if watch.handshake_drops >= HANDSHAKE_DROPS:
            raise _protocol_error(settings) from last
        if remaining <= 0:
            detail = f": {last}" if last else ""
            raise KafkaUnreachableError(
                f"Kafka at {_servers(settings)} did not answer within {limit:g}s{detail}"
            ) from last
