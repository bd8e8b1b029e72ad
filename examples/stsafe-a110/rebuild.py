#!/usr/bin/env python3
"""Rebuilds two real STSAFE-A110 certificates, bit for bit, from the fields STMicroelectronics'
STSELib prints in its "STSAFE-A110 multi-step device authentication" example log:

  stm-stsafe-a-prod-ca-01.pem           ST's production root "STM STSAFE-A PROD CA 01"
  eval3-0209B0846159E439520139.pem      STSAFE-A110 evaluation device certificates it issued
  eval3-020930C56159E439520139.pem      (two chips, two runs of the example)

The log gives every field, the public keys and the signatures (r, s), but not the DER. We
re-encode the TBSCertificate and keep the encoding whose signature verifies under ST's root key:
only the original bytes can, so the output is authenticated, not guessed. (The search covers the
string types of the names, which the log does not show.) Needs pyca/cryptography.
"""
import itertools
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils


def tlv(tag, body):
    n = len(body)
    length = bytes([n]) if n < 0x80 else bytes([0x81, n]) if n < 0x100 else bytes([0x82, n >> 8, n & 0xFF])
    return bytes([tag]) + length + body


def seq(*parts):
    return tlv(0x30, b"".join(parts))


def oid(dotted):
    arcs = [int(x) for x in dotted.split(".")]
    out = bytes([40 * arcs[0] + arcs[1]])
    for v in arcs[2:]:
        enc = [v & 0x7F]
        v >>= 7
        while v:
            enc.append(0x80 | (v & 0x7F))
            v >>= 7
        out += bytes(reversed(enc))
    return tlv(0x06, out)


def integer(b):
    b = b.lstrip(b"\0") or b"\0"
    return tlv(0x02, (b"\0" + b) if b[0] & 0x80 else b)


def name(attrs):
    return seq(*[tlv(0x31, seq(oid(o), tlv(t, v.encode()))) for o, t, v in attrs])


ECDSA_SHA256 = seq(oid("1.2.840.10045.4.3.2"))
PRINTABLE, UTF8 = 0x13, 0x0C


def spki(x, y):
    alg = seq(oid("1.2.840.10045.2.1"), oid("1.2.840.10045.3.1.7"))
    return seq(alg, tlv(0x03, b"\0\x04" + bytes.fromhex(x) + bytes.fromhex(y)))


def st_root_name(tags):
    return name([("2.5.4.6", tags[0], "NL"), ("2.5.4.10", tags[1], "STMicroelectronics nv"),
                 ("2.5.4.3", tags[2], "STM STSAFE-A PROD CA 01")])


# --- values printed by STSELib ---------------------------------------------------------------
CA_X = "82194F26CCA36E0E82195CE66658EC64A466922F58C9E64B5DE1A29E7F39863D"
CA_Y = "042692E4C8AC79F96D2FED52774D52819539F21F3ECD1938F83D70AEE09CCD8D"
CA_SIG = ("6EE5433247AC7234FC9D175AA51E83276901ADEC1F005E371F40734DE38CC52E",
          "B1D9516AAD9A3E86D22B8E3B3BD0146FABB9B922F0452634FE927FF5D636CD90")
# (die serial, public key X, Y, certificate signature r, s)
DEVICES = [
    ("0209B0846159E439520139",
     "0FA0F71E23AA2D360AC0E1CB86D23529D38F95ABEA07723EDD587F1C50B66596",
     "0EB0D1F107E07DA054AAFB5E9BA857199DD5BB7F55426131621D40DB132C3CDE",
     ("E977AF4CA3238895C98614C90C4BA9E469216047371F0A9E77741664CCE90BD2",
      "2AD6BE5394D2375ED112971FE65FF703B33C2BF607FF8A54663C1BB3AA737339")),
    ("020930C56159E439520139",
     "F52FEE40179DB073E84200AFA3FEE6A396B4C590F97D5EF0D3CEBDC68EDB2CFD",
     "F02DC53CB602D91D7EEC3CF046A5E6C1B7906692E57D8F44201EE466C5EE3ED0",
     ("D3E6E6F40871781960DF5FBA941A98C88068202262AB0C67F38ECC7C0AF047C3",
      "6A0E5460D9D7251A6E1A6244775A9334DF1121CC00ACFEBB9C85FEA6FD14C80C")),
]

root_key = ec.EllipticCurvePublicNumbers(int(CA_X, 16), int(CA_Y, 16), ec.SECP256R1()).public_key()


def authentic(candidates, rs):
    sig = utils.encode_dss_signature(int(rs[0], 16), int(rs[1], 16))
    for tbs in candidates:
        try:
            root_key.verify(sig, tbs, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            continue
        return x509.load_der_x509_certificate(seq(tbs, ECDSA_SHA256, tlv(0x03, b"\0" + sig)))
    raise SystemExit("no encoding verifies: the printed fields were misread")


def root_candidates():
    bc = seq(seq(oid("2.5.29.19"), tlv(0x01, b"\xff"), tlv(0x04, seq(tlv(0x01, b"\xff")))))
    validity = seq(tlv(0x17, b"180727000000Z"), tlv(0x17, b"480727000000Z"))
    for tags in itertools.product([PRINTABLE, UTF8], repeat=3):
        n = st_root_name(tags)
        yield seq(tlv(0xA0, integer(b"\x02")), integer(b"\x01"), ECDSA_SHA256, n, validity, n,
                  spki(CA_X, CA_Y), tlv(0xA3, bc))


def device_candidates(die_serial, x, y):
    for itags, stags in itertools.product(itertools.product([PRINTABLE, UTF8], repeat=3), repeat=2):
        subject = name([("2.5.4.6", stags[0], "FR"), ("2.5.4.10", stags[1], "STMicroelectronics"),
                        ("2.5.4.3", stags[2], f"eval3-{die_serial}")])
        # 2051 is past 2049: RFC 5280 wants GeneralizedTime, but try UTCTime too.
        for not_after in (tlv(0x18, b"20510305000000Z"), tlv(0x17, b"510305000000Z")):
            yield seq(tlv(0xA0, integer(b"\x02")), integer(bytes.fromhex(die_serial)), ECDSA_SHA256,
                      st_root_name(itags), seq(tlv(0x17, b"210305000000Z"), not_after), subject,
                      spki(x, y))


here = Path(__file__).parent
outputs = [(authentic(root_candidates(), CA_SIG), "stm-stsafe-a-prod-ca-01.pem")]
for die_serial, x, y, sig in DEVICES:
    outputs.append((authentic(device_candidates(die_serial, x, y), sig), f"eval3-{die_serial}.pem"))
for cert, filename in outputs:
    (here / filename).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    print("wrote", filename, cert.subject.rfc4514_string())
