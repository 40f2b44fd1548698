"""Start a real rsyslogd on 127.0.0.1 for the syslog output tests.

The daemon listens on plain TCP, on TLS (GnuTLS driver, anonymous clients), on
TLS that requires a client certificate, and on UDP. It writes every record it
parses to `records.ndjson` as one JSON object with the RFC 5424 fields that the
tests check. Certificates come from a throwaway CA made with `cryptography`.
"""

import datetime
import ipaddress
import json
import signal
import socket
import subprocess
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

RSYSLOGD = "/usr/sbin/rsyslogd"
START_TIMEOUT_SECONDS = 20.0
PROBE_MSGID = "probe"

# maxMessageSize must come before the inputs are loaded, or rsyslog keeps its 8 KiB default.
CONFIG_TEMPLATE = """\
global(
  workDirectory="{work}"
  maxMessageSize="256k"
  defaultNetstreamDriverCAFile="{ca}"
  defaultNetstreamDriverCertFile="{cert}"
  defaultNetstreamDriverKeyFile="{key}"
)
module(load="imtcp" maxSessions="100")
module(load="imudp")

input(type="imtcp" address="127.0.0.1" port="{tcp_port}" name="tcp")
input(type="imtcp" address="127.0.0.1" port="{tls_port}" name="tls"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
input(type="imtcp" address="127.0.0.1" port="{mtls_port}" name="mtls"
      streamDriver.name="gtls" streamDriver.mode="1"
      streamDriver.authMode="x509/certvalid")
input(type="imudp" address="127.0.0.1" port="{udp_port}" name="udp")

template(name="record_json" type="list" option.jsonf="on") {{
  property(outname="input" name="inputname" format="jsonf")
  property(outname="pri" name="pri" format="jsonf")
  property(outname="version" name="protocol-version" format="jsonf")
  property(outname="timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app_name" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
}}
action(type="omfile" file="{records}" template="record_json")
"""


def free_port(kind=socket.SOCK_STREAM):
    """Return a port that is free on 127.0.0.1 for KIND right now."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_pem(path, key=None, cert=None):
    if key is not None:
        data = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    else:
        data = cert.public_bytes(serialization.Encoding.PEM)
    Path(path).write_bytes(data)
    return str(path)


def make_ca(directory, common_name):
    """Write a self-signed CA to DIRECTORY and return (key, cert, cert_path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    path = _write_pem(Path(directory) / f"{common_name}.crt", cert=cert)
    return key, cert, path


def make_leaf(directory, stem, ca_key, ca_cert, *, client):
    """Write a certificate for 127.0.0.1/localhost signed by the CA; return (cert_path, key_path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    usage = x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(stem))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path = _write_pem(Path(directory) / f"{stem}.crt", cert=cert)
    key_path = _write_pem(Path(directory) / f"{stem}.key", key=key)
    return cert_path, key_path


class RsyslogServer:
    """One rsyslogd process with its config, certificates and output file in DIRECTORY."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self.records_path = self.directory / "records.ndjson"
        self.tcp_port = free_port()
        self.tls_port = free_port()
        self.mtls_port = free_port()
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.process = None
        self.starts = 0
        self._make_certificates()
        self._write_config()

    def _make_certificates(self):
        ca_key, ca_cert, self.ca_file = make_ca(self.directory, "podspool-test-ca")
        self.server_cert, self.server_key = make_leaf(
            self.directory, "server", ca_key, ca_cert, client=False
        )
        self.client_cert, self.client_key = make_leaf(
            self.directory, "client", ca_key, ca_cert, client=True
        )
        _, _, self.wrong_ca_file = make_ca(self.directory, "unrelated-ca")

    def _write_config(self):
        work = self.directory / "work"
        work.mkdir(exist_ok=True)
        self.config_path = self.directory / "rsyslog.conf"
        self.config_path.write_text(
            CONFIG_TEMPLATE.format(
                work=work, ca=self.ca_file, cert=self.server_cert, key=self.server_key,
                tcp_port=self.tcp_port, tls_port=self.tls_port, mtls_port=self.mtls_port,
                udp_port=self.udp_port, records=self.records_path,
            )
        )

    def start(self):
        """Start rsyslogd and wait until every listener accepts messages."""
        self.starts += 1
        log_path = self.directory / "rsyslogd.log"
        command = [
            RSYSLOGD, "-n", "-f", str(self.config_path),
            "-i", str(self.directory / "rsyslogd.pid"),
        ]
        with open(log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, cwd=self.directory
            )
        self._wait_ready(log_path)

    def _wait_ready(self, log_path):
        """Send probes on plain TCP and UDP until rsyslogd writes both to the output file.

        The probe text names this start, so probes left by an earlier run of
        the same server do not count.
        """
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        pending = {"tcp", "udp"}
        while pending:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"rsyslogd exited with {self.process.returncode}: {log_path.read_text()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"rsyslogd did not start listening: {log_path.read_text()}")
            self._send_probes(pending)
            time.sleep(0.1)
            seen = {r["input"] for r in self.records(include_probes=True)
                    if r["msgid"] == PROBE_MSGID and r["msg"] == self._probe_text()}
            pending -= seen

    def _send_probes(self, inputs):
        probe = f"<14>1 - - podspool-test - {PROBE_MSGID} - {self._probe_text()}".encode()
        if "tcp" in inputs:
            try:
                with socket.create_connection(("127.0.0.1", self.tcp_port), timeout=1) as sock:
                    sock.sendall(b"%d %s" % (len(probe), probe))
            except OSError:
                pass
        if "udp" in inputs:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.sendto(probe, ("127.0.0.1", self.udp_port))

    def _probe_text(self):
        return f"ready {self.starts}"

    def stop(self):
        """Stop rsyslogd with SIGTERM (it drains its queue and closes every connection)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def records(self, include_probes=False):
        """Return the parsed records written so far, probes left out unless asked for."""
        if not self.records_path.exists():
            return []
        records = []
        with open(self.records_path, "rb") as handle:
            for line in handle:
                if not line.endswith(b"\n"):
                    break
                record = json.loads(line)
                if include_probes or record.get("msgid") != PROBE_MSGID:
                    records.append(record)
        return records

    def wait_for_records(self, count, timeout=15.0):
        """Return the records once at least COUNT have arrived, or all of them at the timeout."""
        deadline = time.monotonic() + timeout
        records = self.records()
        while len(records) < count and time.monotonic() < deadline:
            time.sleep(0.05)
            records = self.records()
        return records

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info):
        self.stop()
