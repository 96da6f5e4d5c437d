"""The secure local stack's own CA, broker certificate and passwords (``local up --secure``).

Made once per home, in ``<home>/secure/`` (mode 0700, files 0600), with the ``cryptography``
package: a CA that signs the broker's certificate (SAN ``127.0.0.1`` and ``localhost``, used
for TLS on the client listener and mutual TLS on the KRaft controller listener), random
passwords for the SCRAM users of Kafka and the password users of ClickHouse, and one env file
per role that sets everything a client needs (``set -a; . <home>/secure/services.env``).
Nothing here prints or logs a password.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
import os
import secrets
import shlex
from collections.abc import Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID as EKU
from cryptography.x509.oid import NameOID

from streams.errors import LocalStackError
from streams.local._common import file_lock
from streams.settings import Secret, Settings, env_name

MECHANISM = "SCRAM-SHA-512"
#: Kafka SCRAM users: the services' super user, the SDK's restricted user, the broker itself
KAFKA_ADMIN, KAFKA_SDK, KAFKA_BROKER = "admin", "sdk", "broker"
#: ClickHouse users: sink and migrations (the database), `spendstream report` (SELECT only)
CLICKHOUSE_WRITER, CLICKHOUSE_REPORTS = "writer", "reports"
#: Subject of the broker certificate; its DN is the controller listener's (mTLS) principal
BROKER_CN = "spendstream-broker"
ROLES = ("services", "sdk", "reports")
_PASSWORDS = (
    f"kafka.{KAFKA_ADMIN}",
    f"kafka.{KAFKA_SDK}",
    f"kafka.{KAFKA_BROKER}",
    f"clickhouse.{CLICKHOUSE_WRITER}",
    f"clickhouse.{CLICKHOUSE_REPORTS}",
)
CA_DAYS, CERT_DAYS = 3650, 825


def secure_dir(settings: Settings) -> Path:
    return settings.home / "secure"


@dataclasses.dataclass(frozen=True)
class LocalSecrets:
    """Paths and passwords of one secure home (passwords as Secret: never shown)."""

    root: Path
    passwords: Mapping[str, Secret]

    @property
    def ca_path(self) -> Path:
        return self.root / "ca.pem"

    @property
    def broker_keystore(self) -> Path:
        """The broker's key, certificate and CA in one PEM file (Kafka's PEM keystore)."""
        return self.root / "broker-keystore.pem"

    @property
    def broker_jaas(self) -> Path:
        """JAAS file with the broker's own SCRAM login (kept out of server.properties)."""
        return self.root / "broker-jaas.conf"

    def password(self, key: str) -> Secret:
        return self.passwords[key]

    def kafka_overrides(self, user: str) -> dict[str, object]:
        return {
            "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_mechanism": MECHANISM,
            "kafka_sasl_username": user,
            "kafka_sasl_password": self.passwords[f"kafka.{user}"],
            "kafka_tls_ca": self.ca_path,
        }

    def overrides(self, role: str) -> dict[str, object]:
        """Settings fields of a role: services (Kafka admin, ClickHouse writer + reports),
        sdk (Kafka sdk user only), reports (ClickHouse reports user only)."""
        if role == "services":
            return {
                **self.kafka_overrides(KAFKA_ADMIN),
                "clickhouse_user": CLICKHOUSE_WRITER,
                "clickhouse_password": self.passwords[f"clickhouse.{CLICKHOUSE_WRITER}"],
                "clickhouse_reports_user": CLICKHOUSE_REPORTS,
                "clickhouse_reports_password": self.passwords[f"clickhouse.{CLICKHOUSE_REPORTS}"],
            }
        if role == "sdk":
            return self.kafka_overrides(KAFKA_SDK)
        if role == "reports":
            return {
                "clickhouse_user": CLICKHOUSE_REPORTS,
                "clickhouse_password": self.passwords[f"clickhouse.{CLICKHOUSE_REPORTS}"],
            }
        raise ValueError(f"unknown role {role!r} (one of {', '.join(ROLES)})")

    def settings_for(self, settings: Settings, role: str) -> Settings:
        return dataclasses.replace(settings, **self.overrides(role))  # type: ignore[arg-type]

    def env_path(self, role: str) -> Path:
        return self.root / f"{role}.env"


def _env_lines(settings: Settings, values: Mapping[str, object]) -> str:
    base: dict[str, object] = {
        "home": settings.home,
        "local_secure": "true",
        "local_kafka_port": settings.local_kafka_port,
        "local_kafka_controller_port": settings.local_kafka_controller_port,
        "local_clickhouse_http_port": settings.local_clickhouse_http_port,
        "local_clickhouse_tcp_port": settings.local_clickhouse_tcp_port,
    }
    lines = ["# spendstream: settings of the secure local stack (keep private)"]
    for name, value in {**base, **values}.items():
        shown = value.reveal() if isinstance(value, Secret) else str(value)
        lines.append(f"{env_name(name)}={shlex.quote(shown)}")
    return "\n".join(lines) + "\n"


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of an env file written here (shell-quoted values)."""
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, raw = line.partition("=")
            parts = shlex.split(raw)
            found[name.strip()] = parts[0] if parts else ""
    return found


def _write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner may read (created 0600, never world-readable for a moment)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(**allowed: bool) -> x509.KeyUsage:
    names = (
        "digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
        "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only",
    )  # fmt: skip
    return x509.KeyUsage(**{name: allowed.get(name, False) for name in names})


def make_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, common_name: str
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A certificate for 127.0.0.1/localhost, for TLS servers and (mTLS) clients."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_agreement=True), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([EKU.SERVER_AUTH, EKU.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load(settings: Settings) -> LocalSecrets | None:
    """The secrets of this home, or None when it was never started with ``--secure``."""
    root = secure_dir(settings)
    try:
        raw = json.loads((root / "credentials.json").read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise LocalStackError(f"secure stack: {root / 'credentials.json'} is corrupt") from exc
    return LocalSecrets(root, {k: Secret(str(v)) for k, v in raw.items()})


def ensure(settings: Settings) -> LocalSecrets:
    """Make the CA, broker certificate, passwords and env files once; the same ones after."""
    root = secure_dir(settings)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    with file_lock(root / ".lock"):
        found = load(settings)
        if found is None:
            found = _create(settings, root)
        for role in ROLES:  # ports or home may differ from the last start: rewrite
            _write_private(
                found.env_path(role), _env_lines(settings, found.overrides(role)).encode()
            )
        return found


def _create(settings: Settings, root: Path) -> LocalSecrets:
    ca_key, ca_cert = make_ca(f"spendstream local CA {secrets.token_hex(4)}")
    key, cert = make_server_cert(ca_key, ca_cert, BROKER_CN)
    _write_private(root / "ca-key.pem", _pem_key(ca_key))
    _write_private(root / "ca.pem", _pem_cert(ca_cert))
    keystore = _pem_key(key) + _pem_cert(cert) + _pem_cert(ca_cert)
    _write_private(root / "broker-keystore.pem", keystore)
    # hex: no character needs quoting in Kafka's --add-scram syntax, JAAS or XML
    passwords = {name: secrets.token_hex(24) for name in _PASSWORDS}
    broker_password = passwords[f"kafka.{KAFKA_BROKER}"]
    _write_private(
        root / "broker-jaas.conf",
        (
            "KafkaServer {\n  org.apache.kafka.common.security.scram.ScramLoginModule required\n"
            f'  username="{KAFKA_BROKER}"\n  password="{broker_password}";\n}};\n'
        ).encode(),
    )
    # last: its presence means the rest is complete
    _write_private(root / "credentials.json", json.dumps(passwords, indent=2).encode())
    return LocalSecrets(root, {k: Secret(v) for k, v in passwords.items()})
