"""The secure local stack on the real services: SASL_SSL + SCRAM-SHA-512, ACLs, TLS trust,
ClickHouse password users, and start-up checks that fail at once with one AuthError."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from streams.budgets import read_budgets
from streams.clickhouse import check_reachable, connect
from streams.errors import AuthError
from streams.generate import generate_events
from streams.local import secure
from streams.sdk.enforcement import EnforcementWatcher
from streams.sdk.producer import TokenEventProducer
from streams.settings import Secret, Settings
from streams.topics import TopicSpec, ensure_topics


def _consume_error(settings: Settings, topic: str) -> KafkaError | None:
    """The first error a consumer assigned to ``topic`` gets, None when it reads fine."""
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"spendstream-view-{topic}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        for _ in range(40):
            msg = consumer.poll(0.25)
            if msg is not None:
                return msg.error()
        return None
    finally:
        consumer.close()


def test_sdk_user_writes_events_and_reads_enforcement_only(secure_stack):
    sdk, services = secure_stack.sdk, secure_stack.services
    failures: list[str] = []
    with TokenEventProducer(sdk, on_error=lambda _id, reason: failures.append(reason)) as p:
        for event in generate_events(20, seed=3):
            p.record(event)
    assert failures == []
    assert p.stats.delivered == 20

    # denied writes elsewhere: the alerts topic (through the SDK) and the budgets topic
    denied: list[str] = []
    producer = TokenEventProducer(
        sdk, topic=sdk.topic_alerts, on_error=lambda _id, reason: denied.append(reason)
    )
    for event in generate_events(3, seed=4):
        producer.record(event)
    assert producer.flush(30) == 0
    assert producer.stats.delivered == 0
    assert len(denied) == 3
    assert all("Topic authorization failed" in reason for reason in denied), denied
    errors: list[KafkaError] = []
    raw = Producer({**sdk.kafka_client_config(), "message.timeout.ms": 20_000})
    raw.produce(sdk.topic_budgets, b"{}", b"evil", on_delivery=lambda err, _msg: errors.append(err))
    raw.flush(30)
    assert [e.code() for e in errors] == [KafkaError.TOPIC_AUTHORIZATION_FAILED]

    # no reading of the events (nor creating topics); reading block states works
    refused = _consume_error(sdk, sdk.topic_events)
    assert refused is not None
    assert refused.code() in (
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
    )
    with pytest.raises(AuthError, match="denied user 'sdk'"):
        ensure_topics(sdk, [TopicSpec(f"test.sdk.{uuid.uuid4().hex[:8]}", 1)])
    watcher = EnforcementWatcher(sdk).start(timeout=30)
    watcher.stop()

    # the services' user reads what the SDK wrote
    assert _consume_error(services, sdk.topic_events) is None


def _other_ca(tmp_path: Path) -> Path:
    _key, cert = secure.make_ca("not the stack's CA")
    path = tmp_path / "other-ca.pem"
    path.write_bytes(secure._pem_cert(cert))
    return path


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong password", "rejected the login of user 'admin'"),
        ("unknown user", "rejected the login of user 'mallory'"),
        ("untrusted certificate", "SPENDSTREAM_KAFKA_TLS_CA"),
        ("plaintext client", "expects another security protocol than PLAINTEXT"),
    ],
)
def test_bad_kafka_credentials_fail_at_once_with_one_error(secure_stack, tmp_path, case, expected):
    good = secure_stack.services
    bad = {
        "wrong password": dataclasses.replace(good, kafka_sasl_password=Secret("wrong-pw-1")),
        "unknown user": dataclasses.replace(good, kafka_sasl_username="mallory"),
        "untrusted certificate": dataclasses.replace(good, kafka_tls_ca=_other_ca(tmp_path)),
        "plaintext client": dataclasses.replace(
            good, kafka_security_protocol="PLAINTEXT", kafka_sasl_mechanism=None
        ),
    }[case]
    # a long check timeout: only recognising the error (not waiting it out) raises AuthError
    bad = dataclasses.replace(bad, kafka_check_timeout_s=120.0)
    attempts = {
        "SDK producer": lambda: TokenEventProducer(bad),
        "services' topic check": lambda: ensure_topics(bad, timeout=120),
        "enforcement watcher": lambda: EnforcementWatcher(bad).start(timeout=120),
        "budgets CLI's read": lambda: read_budgets(bad, timeout=120),
    }
    for name, attempt in attempts.items():
        with pytest.raises(AuthError) as caught:
            attempt()
        message = str(caught.value)
        assert expected in message, (name, message)
        for password in [*secure_stack.passwords, "wrong-pw-1"]:
            assert password not in message, name


def test_clickhouse_reports_user_reads_and_cannot_write(secure_stack):
    services, reports = secure_stack.services, secure_stack.services.for_reports()
    assert reports.clickhouse_user == secure.CLICKHOUSE_REPORTS
    table = f"sec_{uuid.uuid4().hex[:8]}"
    writer = connect(services, database=services.clickhouse_database)
    reader = connect(reports, database=reports.clickhouse_database)
    try:
        writer.command(f"CREATE TABLE {table} (x Int64) ENGINE = MergeTree ORDER BY x")
        writer.insert(table, [[1], [2]], column_names=["x"])
        assert reader.query(f"SELECT sum(x) FROM {table}").result_rows == [(3,)]
        for attempt in (
            lambda: reader.insert(table, [[40]], column_names=["x"]),
            lambda: reader.command(f"INSERT INTO {table} VALUES (50)"),
            lambda: reader.command(f"ALTER TABLE {table} DELETE WHERE 1"),
            lambda: reader.command(f"CREATE TABLE {table}_x (x Int64) ENGINE = Memory"),
            lambda: reader.command(f"DROP TABLE {table}"),
        ):
            with pytest.raises(Exception, match=r"ACCESS_DENIED|READONLY|Not enough privileges"):
                attempt()
        assert writer.query(f"SELECT sum(x), count() FROM {table}").result_rows == [(3, 2)]

        # the passwordless `default` (the server's own login) sees no database at all
        anonymous = dataclasses.replace(
            services, clickhouse_user="default", clickhouse_password=None
        )
        nobody = connect(anonymous)
        try:
            assert services.clickhouse_database not in {
                r[0] for r in nobody.query("SHOW DATABASES").result_rows
            }
            with pytest.raises(Exception, match=r"ACCESS_DENIED|UNKNOWN_TABLE|Unknown table"):
                nobody.query(f"SELECT count() FROM {services.clickhouse_database}.{table}")
        finally:
            nobody.close()
    finally:
        writer.command(f"DROP TABLE IF EXISTS {table}")
        writer.close()
        reader.close()

    wrong = dataclasses.replace(services, clickhouse_password=Secret("wrong-pw-2"))
    for attempt in (lambda: connect(wrong), lambda: check_reachable(wrong, timeout=120)):
        with pytest.raises(AuthError, match="refused user 'writer'") as caught:
            attempt()
        assert "wrong-pw-2" not in str(caught.value)
