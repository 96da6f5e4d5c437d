"""The secure local stack's files and configs, and how errors are classified (no services)."""

from __future__ import annotations

import stat

import pytest
from confluent_kafka import KafkaError
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from streams.clickhouse import auth_error
from streams.errors import SettingsError
from streams.local import secure
from streams.local.clickhouse import render_config, render_users
from streams.local.kafka import render_server_properties, sdk_acls, view_group
from streams.preflight import auth_failure
from streams.settings import Secret, Settings


@pytest.fixture
def settings(tmp_path):
    return Settings.from_env({}, home=tmp_path / "home", local_secure=True)


def test_secrets_are_made_once_private_and_parse_back_into_settings(settings):
    made = secure.ensure(settings)
    again = secure.ensure(settings)
    assert made.passwords == again.passwords  # the same CA and passwords on every start
    assert len({p.reveal() for p in made.passwords.values()}) == len(made.passwords)
    root = secure.secure_dir(settings)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    for path in root.iterdir():
        if path.name != ".lock":
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path

    services = Settings.from_env(secure.read_env_file(made.env_path("services")))
    assert services.kafka_security_protocol == "SASL_SSL"
    assert services.kafka_sasl_mechanism == "SCRAM-SHA-512"
    assert services.kafka_sasl_username == secure.KAFKA_ADMIN
    assert services.kafka_sasl_password == made.password("kafka.admin")
    assert services.kafka_tls_ca == made.ca_path
    assert services.clickhouse_user == secure.CLICKHOUSE_WRITER
    assert services.for_reports().clickhouse_user == secure.CLICKHOUSE_REPORTS
    assert services.for_reports().clickhouse_password == made.password("clickhouse.reports")
    assert services.home == settings.home and services.local_secure
    sdk = Settings.from_env(secure.read_env_file(made.env_path("sdk")))
    assert sdk.kafka_sasl_username == secure.KAFKA_SDK
    assert sdk.clickhouse_user == "default"  # the SDK gets no ClickHouse credentials
    reports = Settings.from_env(secure.read_env_file(made.env_path("reports")))
    assert reports.clickhouse_user == secure.CLICKHOUSE_REPORTS
    assert reports.kafka_sasl_username is None


def test_broker_certificate_is_signed_by_the_ca_for_loopback(settings):
    made = secure.ensure(settings)
    ca = x509.load_pem_x509_certificate(made.ca_path.read_bytes())
    chain = x509.load_pem_x509_certificates(
        made.broker_keystore.read_bytes().split(b"-----END PRIVATE KEY-----")[1]
    )
    broker = chain[0]
    assert broker.issuer == ca.subject
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    broker.verify_directly_issued_by(ca)
    names = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert broker.subject.rfc4514_string() == f"CN={secure.BROKER_CN}"


def test_server_configs_hold_no_clear_password(settings):
    made = secure.ensure(settings)
    props = render_server_properties(settings, settings.home / "data", made)
    users = render_users(settings, made)
    for password in made.passwords.values():
        assert password.reveal() not in props
        assert password.reveal() not in users
    lines = dict(line.split("=", 1) for line in props.splitlines())
    assert lines["listeners"].startswith("SASL_SSL://127.0.0.1:")
    assert "PLAINTEXT://" not in lines["listeners"]
    assert lines["listener.security.protocol.map"] == "CONTROLLER:SSL,SASL_SSL:SASL_SSL"
    assert lines["listener.name.controller.ssl.client.auth"] == "required"
    assert lines["allow.everyone.if.no.acl.found"] == "false"
    assert "User:sdk" not in lines["super.users"]
    assert "<users_config>users.xml</users_config>" in render_config(settings, users=True)
    assert "users_config" not in render_config(settings)
    assert "GRANT SELECT ON `spendstream`.*" in users
    assert "<grants><query>GRANT SYSTEM LISTEN ON *.*</query></grants>" in users  # default


def test_sdk_acls_are_write_events_and_read_enforcement_only(settings):
    grants = {(b.restype.name, b.name, b.operation.name) for b in sdk_acls(settings)}
    assert grants == {
        ("TOPIC", settings.topic_events, "WRITE"),
        ("TOPIC", settings.topic_events, "DESCRIBE"),
        ("TOPIC", settings.topic_enforcement, "READ"),
        ("TOPIC", settings.topic_enforcement, "DESCRIBE"),
        ("GROUP", view_group(settings.topic_enforcement), "READ"),
    }


def test_the_view_group_matches_what_the_enforcement_view_uses():
    import inspect

    from streams.sdk.view import CompactedView

    assert 'f"spendstream-view-{self.topic}"' in inspect.getsource(CompactedView._run)
    assert view_group("t") == "spendstream-view-t"


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (KafkaError._AUTHENTICATION, "SASL authentication error: invalid credentials", "login"),
        (KafkaError._SSL, "SSL handshake failed: certificate verify failed", "TLS_CA"),
        (KafkaError._TRANSPORT, "error:0A000086:SSL routines::certificate verify failed", "TLS"),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, "Topic authorization failed", "denied"),
        (KafkaError._SSL, "SSL handshake failed: sslv3 alert handshake failure", "TLS_CA"),
        (KafkaError._SSL, "SSL handshake failed: wrong version number", "security protocol"),
        (KafkaError._SSL, "SSL handshake failed: Disconnected", None),  # a restart, say
        (KafkaError._TRANSPORT, "Connection refused", None),
        (KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down", None),
    ],
)
def test_kafka_errors_that_retrying_cannot_fix_are_auth_errors(settings, code, text, expected):
    found = auth_failure(settings, KafkaError(code, text))
    if expected is None:
        assert found is None
    else:
        assert found is not None and expected in str(found)


def test_clickhouse_auth_errors_name_the_user_not_the_password(settings):
    with_password = Settings.from_env(
        {}, clickhouse_user="writer", clickhouse_password=Secret("s3cret-value")
    )
    found = auth_error(
        with_password, Exception("Code: 516. DB::Exception: writer: Authentication failed")
    )
    assert found is not None and "refused user 'writer'" in str(found)
    assert "s3cret-value" not in str(found)
    assert auth_error(settings, Exception("Code: 60. Unknown table")) is None


def test_reports_password_without_user_is_a_settings_error():
    with pytest.raises(SettingsError, match="REPORTS_PASSWORD"):
        Settings.from_env({"SPENDSTREAM_CLICKHOUSE_REPORTS_PASSWORD": "x"})
    assert Settings.from_env({}).for_reports().clickhouse_user == "default"
    shown = repr(
        Settings.from_env(
            {
                "SPENDSTREAM_CLICKHOUSE_REPORTS_USER": "r",
                "SPENDSTREAM_CLICKHOUSE_REPORTS_PASSWORD": "xyzzy",
            }
        )
    )
    assert "xyzzy" not in shown


def test_local_up_has_a_secure_flag_naming_its_variable():
    from click.testing import CliRunner

    from streams.cli import main

    result = CliRunner().invoke(main, ["local", "up", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "--secure / --no-secure" in result.output
    assert "SPENDSTREAM_LOCAL_SECURE" in result.output


def test_a_refused_reports_user_names_the_reports_settings():
    """`spendstream report` logs in as SPENDSTREAM_CLICKHOUSE_REPORTS_USER: a wrong reports
    password must point there, not at the writer's settings (found trying it as a new user)."""
    settings = Settings.from_env(
        {},
        clickhouse_user="writer",
        clickhouse_password=Secret("w-secret"),
        clickhouse_reports_user="reports",
        clickhouse_reports_password=Secret("r-secret"),
    )
    refused = Exception("Code: 516. DB::Exception: reports: Authentication failed")
    found = auth_error(settings.for_reports(), refused)
    assert found is not None
    text = str(found)
    assert "refused user 'reports'" in text
    assert "SPENDSTREAM_CLICKHOUSE_REPORTS_USER" in text
    assert "SPENDSTREAM_CLICKHOUSE_REPORTS_PASSWORD" in text
    assert "r-secret" not in text and "w-secret" not in text
    writer = str(auth_error(settings, refused))
    assert "SPENDSTREAM_CLICKHOUSE_USER and SPENDSTREAM_CLICKHOUSE_PASSWORD" in writer
