"""Shared fixtures: the PoD emulator on loopback, a fake clock, a sentinel token and a throwaway CA."""

import datetime
import ipaddress
import logging

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from podspool.emulator import Emulator

# A token no real system uses; tests assert it never shows up in logs or output.
SENTINEL_TOKEN = "sentinel-token-3f9c2a7e-never-log-me"
# 2025-01-10T10:00:00Z, on the hour, so hour rounding in tests is easy to follow.
FAKE_CLOCK_START = 1736503200.0


class FakeClock:
    """A clock for the `clock=` arguments that moves only when a test calls advance()."""

    def __init__(self, start=FAKE_CLOCK_START):
        self.now = start

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture
def sentinel_token():
    return SENTINEL_TOKEN


@pytest.fixture
def fake_clock():
    return FakeClock()


@pytest.fixture
def make_emulator():
    """Return a factory that starts Emulators on 127.0.0.1, port 0, with the sentinel token.

    Keyword arguments go to Emulator; every emulator started is stopped after the test.
    """
    started = []

    def factory(**kwargs):
        kwargs.setdefault("host", "127.0.0.1")
        kwargs.setdefault("port", 0)
        kwargs.setdefault("token", SENTINEL_TOKEN)
        emulator = Emulator(**kwargs)
        started.append(emulator)
        return emulator.start()

    yield factory
    for emulator in started:
        emulator.stop()


@pytest.fixture
def emulator(make_emulator):
    """An Emulator with the bundled samples, endless and unpaced, on 127.0.0.1."""
    return make_emulator()


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject, issuer, public_key, signing_key, extensions):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signing_key, hashes.SHA256())


@pytest.fixture
def tls_ca(tmp_path):
    """Make a throwaway CA and a server certificate for 127.0.0.1; return (ca_file, cert_file, key_file)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("podspool test CA")
    ca_key_id = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = _certificate(ca_name, ca_name, ca_key.public_key(), ca_key, [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                       encipher_only=False, decipher_only=False), True),
        (ca_key_id, False),
    ])

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _certificate(_name("127.0.0.1"), ca_name, server_key.public_key(), ca_key, [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.DNSName("localhost"),
        ]), False),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), False),
        (x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id), False),
    ])

    ca_file = tmp_path / "ca.pem"
    cert_file = tmp_path / "server.pem"
    key_file = tmp_path / "server.key"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    key_file.chmod(0o600)
    return str(ca_file), str(cert_file), str(key_file)


@pytest.fixture(autouse=True)
def restore_logging():
    """Undo the handlers that tests calling podspool.cli.main() install on the root logger.

    Without this, a handler bound to a test's captured stderr outlives the test
    and later threads fail writing to the closed stream.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope="module")
def databases(tmp_path_factory):
    """Small MaxMind City and ASN databases over the documentation address blocks."""
    from mmdb_fixture import write_asn_database, write_city_database

    directory = tmp_path_factory.mktemp("geoip")
    return {
        "city": str(write_city_database(directory / "city.mmdb")),
        "asn": str(write_asn_database(directory / "asn.mmdb")),
    }
