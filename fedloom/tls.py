"""The consortium's own TLS: a private CA and the coordinator's server certificate.

Members trust exactly one root, the consortium CA written by `fedloom provision` (never the
system store), so nobody else's certificate can stand in for the coordinator. Keys are ECDSA
P-256: every TLS stack fedloom touches accepts it (gRPC/BoringSSL, OpenSSL via `ssl`, uvicorn,
httpx). The CA key signs once, at provisioning, and then belongs offline.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedloom.errors import UserError

CA_DAYS = 3650  # ten years: the consortium's root
SERVER_DAYS = 825  # the coordinator's certificate; re-issue with `fedloom provision --force`
_SKEW = dt.timedelta(minutes=5)  # tolerate members whose clocks run a little behind
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class Issued:
    """A private key and its certificate, both PEM."""

    key_pem: bytes
    cert_pem: bytes

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key


def parse_san(entry: str) -> x509.GeneralName:
    """'10.0.0.5' / '::1' → IPAddress; 'coordinator.example.org' → DNSName; anything else → UserError."""
    if not isinstance(entry, str) or not entry.strip():
        raise UserError(f"invalid certificate name {entry!r}: expected a DNS name or an IP address")
    text = entry.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        pass
    host = text.rstrip(".")
    if len(host) > 253 or not all(_DNS_LABEL.match(label) for label in host.split(".")):
        raise UserError(
            f"invalid certificate name {entry!r}: expected a DNS name (letters, digits, '-', '.') "
            "or an IP address (wildcards are not allowed)"
        )
    return x509.DNSName(host.lower())


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization[:64]),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def create_ca(federation: str, days: int = CA_DAYS) -> Issued:
    """A self-signed root for the consortium: CA:TRUE (path length 0), keyCertSign + cRLSign."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"{federation} consortium CA", federation)
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


def issue_server_cert(ca: Issued, federation: str, sans: list[str], days: int = SERVER_DAYS) -> Issued:
    """The coordinator's certificate: signed by the CA, names from `sans`, serverAuth only."""
    names = [parse_san(s) for s in sans]
    if not names:
        raise UserError("the coordinator's certificate needs at least one name (federation.sans)")
    key = ec.generate_private_key(ec.SECP256R1())
    ca_cert, ca_key = ca.cert, ca.key
    now = _now()
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{federation} coordinator", federation))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return Issued(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


def verify_issued_by(cert_pem: bytes, ca_pem: bytes) -> None:
    """Raise unless `cert_pem` is signed by the CA in `ca_pem` and is valid now (chain of one)."""
    cert, ca_cert = x509.load_pem_x509_certificate(cert_pem), x509.load_pem_x509_certificate(ca_pem)
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError) as exc:
        raise UserError(
            f"certificate {cert.subject.rfc4514_string()} is not issued by {ca_cert.subject.rfc4514_string()}: {exc}"
        ) from exc
    except Exception as exc:  # InvalidSignature carries no message
        raise UserError(
            f"certificate {cert.subject.rfc4514_string()}: bad signature from {ca_cert.subject.rfc4514_string()}"
        ) from exc
    now = _now()
    if not cert.not_valid_before_utc - _SKEW <= now <= cert.not_valid_after_utc:
        raise UserError(
            f"certificate {cert.subject.rfc4514_string()} is not valid now "
            f"({cert.not_valid_before_utc:%Y-%m-%d} .. {cert.not_valid_after_utc:%Y-%m-%d})"
        )
