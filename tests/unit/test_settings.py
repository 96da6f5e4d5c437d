import dataclasses

import pytest

from streams.errors import SettingsError
from streams.settings import Secret, Settings, env_name


def test_defaults_use_the_local_stack():
    s = Settings.from_env({})
    assert s.kafka_is_local and s.clickhouse_is_local
    assert s.kafka_client_config()["bootstrap.servers"] == "127.0.0.1:19092"
    assert s.clickhouse_http_url == "http://127.0.0.1:18123"


def test_external_services_switch_off_the_local_stack():
    s = Settings.from_env(
        {
            "SPENDSTREAM_KAFKA_BOOTSTRAP": "kafka:9092",
            "SPENDSTREAM_CLICKHOUSE_URL": "https://ch:8443",
        }
    )
    assert not s.kafka_is_local and not s.clickhouse_is_local
    assert s.kafka_client_config()["bootstrap.servers"] == "kafka:9092"


def test_every_error_is_reported_at_once():
    with pytest.raises(SettingsError) as info:
        Settings.from_env(
            {
                "SPENDSTREAM_LOCAL_KAFKA_PORT": "99999",
                "SPENDSTREAM_EVENT_PARTITIONS": "zero",
                "SPENDSTREAM_TIMEZONE": "Mars/Olympus",
                "SPENDSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "SPENDSTREAM_CLICKHOUSE_URL": "ch:8123",
                "SPENDSTREAM_NO_SUCH_THING": "1",
            }
        )
    text = str(info.value)
    for fragment in (
        "LOCAL_KAFKA_PORT",
        "EVENT_PARTITIONS",
        "Mars/Olympus",
        "KAFKA_SASL_MECHANISM: required",
        "CLICKHOUSE_URL: must start",
        "SPENDSTREAM_NO_SUCH_THING: unknown setting",
    ):
        assert fragment in text
    assert len(info.value.problems) == 6


def test_secrets_never_show(tmp_path):
    env = {
        "SPENDSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "SPENDSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "SPENDSTREAM_KAFKA_SASL_USERNAME": "svc",
        "SPENDSTREAM_KAFKA_SASL_PASSWORD": "hunter2-kafka",
        "SPENDSTREAM_CLICKHOUSE_PASSWORD": "hunter2-ch",
    }
    s = Settings.from_env(env)
    assert "hunter2" not in repr(s) and "hunter2" not in str(s)
    assert s.kafka_client_config()["sasl.password"] == "hunter2-kafka"
    assert s.clickhouse_password == Secret("hunter2-ch")
    assert str(s.clickhouse_password) == "***"


def test_invalid_secret_value_is_not_echoed():
    # a bad cross-check must not print the password either
    with pytest.raises(SettingsError) as info:
        Settings.from_env(
            {
                "SPENDSTREAM_KAFKA_SASL_MECHANISM": "PLAIN",
                "SPENDSTREAM_KAFKA_SASL_PASSWORD": "hunter2",
            }
        )
    assert "hunter2" not in str(info.value)


def test_tls_files_must_exist_and_pair(tmp_path):
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(SettingsError) as info:
        Settings.from_env(
            {"SPENDSTREAM_KAFKA_TLS_CERT": str(cert), "SPENDSTREAM_KAFKA_TLS_CA": "/nope.pem"}
        )
    assert "give both or neither" in str(info.value)
    assert "no such file /nope.pem" in str(info.value)


def test_overrides_win_and_env_names_are_known():
    s = Settings.from_env({"SPENDSTREAM_LOCAL_KAFKA_PORT": "1234"}, local_kafka_port=4321)
    assert s.local_kafka_port == 4321
    assert env_name("kafka_bootstrap") == "SPENDSTREAM_KAFKA_BOOTSTRAP"


def test_every_cli_flag_with_a_variable_names_it_in_help():
    import click

    from streams.cli import main

    def options(command):
        yield from (p for p in command.params if isinstance(p, click.Option))
        if isinstance(command, click.Group):
            ctx = click.Context(command)
            for name in command.list_commands(ctx):
                yield from options(command.get_command(ctx, name))

    with_env = [o for o in options(main) if o.envvar]
    assert len(with_env) >= 5
    assert all(o.show_envvar for o in with_env)
    for option in with_env:
        names = [option.envvar] if isinstance(option.envvar, str) else option.envvar
        assert all(n.startswith("SPENDSTREAM_") for n in names), option.name


def test_choices_accept_any_case_and_refuse_unknown_values():
    s = Settings.from_env(
        {
            "SPENDSTREAM_LOG_LEVEL": "debug",
            "SPENDSTREAM_KAFKA_SECURITY_PROTOCOL": "sasl_plaintext",
            "SPENDSTREAM_KAFKA_SASL_MECHANISM": "scram-sha-256",
            "SPENDSTREAM_KAFKA_SASL_USERNAME": "agent",
            "SPENDSTREAM_KAFKA_SASL_PASSWORD": "pw",
        }
    )
    assert s.log_level == "DEBUG"
    assert s.kafka_security_protocol == "SASL_PLAINTEXT"
    assert s.kafka_sasl_mechanism == "SCRAM-SHA-256"
    with pytest.raises(SettingsError, match="LOG_LEVEL"):
        Settings.from_env({"SPENDSTREAM_LOG_LEVEL": "loud"})


def test_with_topic_prefix_renames_every_topic() -> None:
    base = Settings.from_env({})
    renamed = base.with_topic_prefix("run.x1")
    topics = [f.name for f in dataclasses.fields(Settings) if f.name.startswith("topic_")]
    assert topics
    for name in topics:
        assert getattr(renamed, name).startswith("run.x1."), name
    assert len({getattr(renamed, name) for name in topics}) == len(topics)
    assert dataclasses.replace(renamed, **{n: getattr(base, n) for n in topics}) == base
