"""TLS: the server's SSL context (TLS 1.2+), and a self-signed certificate on first run."""

import datetime
import ipaddress
import logging
import os
import re
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

SELF_SIGNED_DAYS = 825
DNS_NAME = re.compile(
    r"(?=.{1,253}$)(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)


def subject_names(extra: str = "") -> list[x509.GeneralName]:
    """localhost, 127.0.0.1 and ::1, then each comma-separated name or IP address of ``extra``
    (``tls_names``). ValueError names a bad entry."""
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    for entry in (e.strip() for e in extra.split(",")):
        if not entry:
            continue
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            if not DNS_NAME.fullmatch(entry):
                raise ValueError(f"not a host name or IP address: {entry!r}") from None
            names.append(x509.DNSName(entry.lower()))
    return names


def ensure_certificate(cert: Path, key: Path, extra_names: str = "") -> bool:
    """Write a self-signed certificate for localhost and ``extra_names`` if neither file
    exists; True if it did."""
    if cert.exists() or key.exists():
        return False
    private_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(
            x509.SubjectAlternativeName(subject_names(extra_names)),
            critical=False,
        )
        # A leaf, not a CA: browsers (Firefox) refuse a CA certificate as a server's even
        # after the user accepted it, and a CA:TRUE key could sign certificates for any name.
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
        )  # fmt: skip
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(private_key.public_key()), critical=False)
        .sign(private_key, hashes.SHA256())
    )
    key.parent.mkdir(parents=True, exist_ok=True)
    cert.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    cert.chmod(0o644)  # public: other local users may need it for curl --cacert
    return True


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")  # forward secrecy, AEAD only (TLS 1.2)
    context.load_cert_chain(cert, key)
    return context
