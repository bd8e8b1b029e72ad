#!/usr/bin/env python3
"""Makes an STSAFE-A-shaped PKI with pyca/cryptography, an X.509 implementation independent
of fleetward's (rcgen + rustls-webpki + x509-cert). Used by gateway/tests/verify_cli.rs.

  stsafe_pki.py OUTDIR [DIE_SERIAL_HEX]

Writes OUTDIR/ca.pem (P-256 root whose only extension is a critical basicConstraints CA:TRUE),
OUTDIR/dev.pem (X.509 v3, *no extensions*, CN=eval3-<die serial>, serial = die serial, 30 years)
and OUTDIR/dev.key (PKCS#8 PEM, for openssl to sign challenges with).
"""
import datetime
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

out = Path(sys.argv[1])
die_serial = sys.argv[2] if len(sys.argv) > 2 else "0209B0846159E439520139"

def name(cn):
    return x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "STMicroelectronics"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])

start = datetime.datetime(2020, 2, 9, tzinfo=datetime.timezone.utc)
end = start.replace(year=2050)

ca_key = ec.generate_private_key(ec.SECP256R1())
ca_name = name("STM STSAFE-A PROD CA 01 (pyca)")
ca = (
    x509.CertificateBuilder()
    .subject_name(ca_name).issuer_name(ca_name)
    .public_key(ca_key.public_key())
    .serial_number(1)
    .not_valid_before(start.replace(year=2019)).not_valid_after(end.replace(year=2049))
    .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    .sign(ca_key, hashes.SHA256())
)

dev_key = ec.generate_private_key(ec.SECP256R1())
dev = (
    x509.CertificateBuilder()
    .subject_name(name(f"eval3-{die_serial}")).issuer_name(ca_name)
    .public_key(dev_key.public_key())
    .serial_number(int(die_serial, 16))
    .not_valid_before(start).not_valid_after(end)
    .sign(ca_key, hashes.SHA256())
)
assert dev.version == x509.Version.v3 and len(dev.extensions) == 0

out.mkdir(parents=True, exist_ok=True)
(out / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
(out / "dev.pem").write_bytes(dev.public_bytes(serialization.Encoding.PEM))
(out / "dev.key").write_bytes(dev_key.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
