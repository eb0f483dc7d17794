"""Throwaway certificates for the TLS tests, made at test time: a CA, server certificates for 127.0.0.1 and
localhost signed by it, client certificates for mTLS, and a second, foreign CA whose certificates a server
must refuse. Nothing is committed: each test run makes its own (EC P-256 keys, fast to make).

    pki = Pki.create(tmp_path)               # tmp_path/ca.pem; a foreign CA beside it
    server = pki.server("server")            # server.pem, server.key (SAN 127.0.0.1, ::1, localhost)
    client = pki.client("alice")             # alice.pem, alice.key (clientAuth)
    stranger = pki.foreign.client("mallory") # signed by the foreign CA
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path
    not_after: datetime.datetime


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


@dataclass(frozen=True)
class Pki:
    folder: Path
    name: str
    key: ec.EllipticCurvePrivateKey
    ca: x509.Certificate
    ca_file: Path

    @staticmethod
    def create(folder: Path, name: str = "ca", foreign: bool = False) -> Pki:
        folder.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        ca = (
            x509.CertificateBuilder()
            .subject_name(_name(f"adrank test {name}"))
            .issuer_name(_name(f"adrank test {name}"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        ca_file = folder / f"{name}.pem"
        ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        return Pki(folder, name, key, ca, ca_file)

    @property
    def foreign(self) -> Pki:
        """Another CA, in a folder beside this one's: what it signs, this one's holders must refuse."""
        return Pki.create(self.folder / "foreign", "foreign-ca")

    def server(self, name: str = "server", days: float = 1.0) -> KeyPair:
        sans: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
        return self._issue(name, ExtendedKeyUsageOID.SERVER_AUTH, sans, days)

    def client(self, name: str = "client", days: float = 1.0) -> KeyPair:
        return self._issue(name, ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName(name)], days)

    def _issue(self, name: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName], days: float) -> KeyPair:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        not_after = (now + datetime.timedelta(days=days)).replace(microsecond=0)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(self.ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        cert_file, key_file = self.folder / f"{name}.pem", self.folder / f"{name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_file)
        return KeyPair(cert_file, key_file, not_after)
