#!/usr/bin/env python3
"""An independent attester: builds fleetward attestation evidence with pycose + cbor2 (signed
firmware measurements and PSA attestation tokens with the RFC 9783 and legacy claim keys) and
SE-style ECDSA answers with pyca/cryptography, then submits them over HTTP and over MQTT
(paho-mqtt, mutual TLS). Prints one JSON object: every step's request and fleetward's verdict.

Used by gateway/tests/attestation_interop.rs; also a worked example for firmware authors
(docs/attestation.md)."""

import argparse
import base64
import hashlib
import json
import ssl
import sys
import threading
import time
import urllib.request

import cbor2
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature
from pycose.algorithms import Es256
from pycose.headers import Algorithm
from pycose.keys import CoseKey
from pycose.messages import Sign1Message

PROFILE_RFC9783 = "tag:psacertified.org,2023:psa#tfm"


class Device:
    def __init__(self, device_id, key_pem):
        self.id = device_id
        self.key_pem = key_pem
        self.cose_key = CoseKey.from_pem_private_key(key_pem)
        self.key = serialization.load_pem_private_key(key_pem.encode(), password=None)

    def sign1(self, claims, tag=True):
        msg = Sign1Message(phdr={Algorithm: Es256}, payload=cbor2.dumps(claims))
        msg.key = self.cose_key
        return msg.encode(tag=tag)

    def measurement(self, nonce, digest, version="1.4.2", name="sensor-fw", signer=b"\x51" * 32, tag=True):
        return self.sign1({1: nonce, 2: name, 3: version, 4: digest, 5: 42, 6: signer, 7: self.id}, tag=tag)

    def psa(self, nonce, components, lifecycle=0x3000, legacy=False):
        ueid = b"\x01" + hashlib.sha256(self.id.encode()).digest()
        if legacy:
            claims = {
                -75000: "PSA_IOT_PROFILE_1",
                -75001: -1,
                -75002: lifecycle,
                -75003: b"\xaa" * 32,
                -75004: b"\xbb" * 32,
                -75006: [{1: t, 2: d, 4: v, 5: b"\x51" * 32} for (t, d, v) in components],
                -75008: nonce,
                -75009: ueid,
                -75010: "www.trustedfirmware.org",
            }
        else:
            claims = {
                265: PROFILE_RFC9783,
                2394: 1,
                2395: lifecycle,
                2396: b"\xaa" * 32,
                2397: b"\xbb" * 32,
                2399: [{1: t, 2: d, 4: v, 5: b"\x51" * 32, 6: "sha-256"} for (t, d, v) in components],
                10: nonce,
                256: ueid,
            }
        return self.sign1(claims)

    def se_signature(self, nonce, der=False):
        """What STSELib does: the 32-byte challenge signed directly as the digest."""
        sig = self.key.sign(nonce, ec.ECDSA(Prehashed(hashes.SHA256())))
        if der:
            return sig
        r, s = decode_dss_signature(sig)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def api(base, token, method, path, body=None):
    req = urllib.request.Request(
        base + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def b64(token):
    return base64.b64encode(token).decode()


def http_scenarios(args, dev, other_id):
    out = {}
    digest_good = bytes.fromhex(args.good_digest)
    digest_blocked = bytes.fromhex(args.blocked_digest)

    def challenge(device_id=dev.id):
        status, body = api(args.api, args.token, "POST", "/api/v1/attestation/challenge", {"device_id": device_id})
        assert status == 200, (status, body)
        return body

    def submit(nonce_hex, fmt, **fields):
        body = {"device_id": dev.id, "nonce": nonce_hex, "format": fmt, **fields}
        return api(args.api, args.token, "POST", "/api/v1/attestation/evidence", body)

    def step(name, status_body):
        status, body = status_body
        out[name] = {"http": status, **(body or {})}

    c = challenge()
    nonce = bytes.fromhex(c["nonce"])
    out["challenge"] = c
    good = dev.measurement(nonce, digest_good)
    step("measurement_good", submit(c["nonce"], "measurement", token_b64=b64(good)))
    step("measurement_replayed", submit(c["nonce"], "measurement", token_b64=b64(good)))

    c = challenge()
    tampered = bytearray(dev.measurement(bytes.fromhex(c["nonce"]), digest_good))
    tampered[-1] ^= 0x01
    step("measurement_tampered_signature", submit(c["nonce"], "measurement", token_b64=b64(bytes(tampered))))

    c = challenge()
    step(
        "measurement_wrong_nonce",
        submit(c["nonce"], "measurement", token_b64=b64(dev.measurement(b"\x00" * 32, digest_good))),
    )

    c = challenge()
    unknown = dev.measurement(bytes.fromhex(c["nonce"]), hashlib.sha256(b"tampered image").digest())
    step("measurement_unknown_firmware", submit(c["nonce"], "measurement", token_b64=b64(unknown)))

    c = challenge()
    # URL-safe base64 without padding, untagged COSE_Sign1: both accepted.
    good = dev.measurement(bytes.fromhex(c["nonce"]), digest_good, tag=False)
    step(
        "measurement_recovers",
        submit(c["nonce"], "measurement", token_b64=base64.urlsafe_b64encode(good).decode().rstrip("=")),
    )

    c = challenge()
    blocked = dev.measurement(bytes.fromhex(c["nonce"]), digest_blocked, version="1.3.0")
    step("measurement_blocked_version", submit(c["nonce"], "measurement", token_b64=b64(blocked)))

    components = [("BL", bytes.fromhex(args.bl_digest), "0.2.0"), ("App", digest_good, "1.4.2")]
    c = challenge()
    step("psa_current_good", submit(c["nonce"], "psa-token", token_b64=b64(dev.psa(bytes.fromhex(c["nonce"]), components))))
    c = challenge()
    step(
        "psa_legacy_good",
        submit(c["nonce"], "psa-token", token_b64=b64(dev.psa(bytes.fromhex(c["nonce"]), components, legacy=True))),
    )
    c = challenge()
    step(
        "psa_debug_lifecycle",
        submit(c["nonce"], "psa-token", token_b64=b64(dev.psa(bytes.fromhex(c["nonce"]), components, lifecycle=0x4000))),
    )
    c = challenge()
    step(
        "psa_legacy_wrong_nonce",
        submit(c["nonce"], "psa-token", token_b64=b64(dev.psa(b"\x07" * 32, components, legacy=True))),
    )

    c = challenge()
    step("se_signature_raw", submit(c["nonce"], "se-signature", signature_hex=dev.se_signature(bytes.fromhex(c["nonce"])).hex()))
    c = challenge()
    step(
        "se_signature_der",
        submit(c["nonce"], "se-signature", signature_hex=dev.se_signature(bytes.fromhex(c["nonce"]), der=True).hex()),
    )
    c = challenge()
    bad = bytearray(dev.se_signature(bytes.fromhex(c["nonce"])))
    bad[5] ^= 0x40
    step("se_signature_tampered", submit(c["nonce"], "se-signature", signature_hex=bytes(bad).hex()))

    # A nonce issued to another device, answered by this one.
    c = challenge(other_id)
    step(
        "foreign_nonce",
        submit(c["nonce"], "measurement", token_b64=b64(dev.measurement(bytes.fromhex(c["nonce"]), digest_good))),
    )

    # Late: the test server's challenges live a few seconds.
    c = challenge()
    time.sleep(args.expire_wait)
    step(
        "measurement_expired",
        submit(c["nonce"], "measurement", token_b64=b64(dev.measurement(bytes.fromhex(c["nonce"]), digest_good))),
    )
    # Malformed requests are 400s, not verdicts.
    step("bad_format", submit("00" * 32, "tpm-quote", token_b64="AA"))
    return out


def mqtt_scenario(args, dev):
    import paho.mqtt.client as mqtt

    got = {"messages": []}
    cond = threading.Condition()

    def on_message(_c, _u, msg):
        with cond:
            got["messages"].append((msg.topic, msg.payload))
            cond.notify_all()

    def wait_for(topic, count, timeout=15):
        deadline = time.time() + timeout
        with cond:
            while sum(1 for t, _ in got["messages"] if t == topic) < count:
                left = deadline - time.time()
                if left <= 0:
                    raise TimeoutError(f"no message on {topic}")
                cond.wait(left)
            return [json.loads(p) for t, p in got["messages"] if t == topic][count - 1]

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=dev.id, protocol=mqtt.MQTTv311)
    ctx = ssl.create_default_context(cafile=args.server_ca)
    ctx.load_cert_chain(args.cert, args.key)
    client.tls_set_context(ctx)
    client.on_message = on_message
    client.connect("127.0.0.1", args.mqtt_port, keepalive=30)
    client.loop_start()
    try:
        base = f"devices/{dev.id}/attestation/"
        client.subscribe(base + "#", qos=1)
        challenge = wait_for(base + "challenge", 1)
        nonce = bytes.fromhex(challenge["nonce"])
        answer = {
            "nonce": challenge["nonce"],
            "format": "measurement",
            "token_b64": b64(dev.measurement(nonce, bytes.fromhex(args.good_digest))),
        }
        client.publish(base + "evidence", json.dumps(answer), qos=1).wait_for_publish(10)
        first = wait_for(base + "result", 1)
        client.publish(base + "evidence", json.dumps(answer), qos=1).wait_for_publish(10)
        replay = wait_for(base + "result", 2)
        client.publish(base + "evidence", b"\x00not json", qos=1).wait_for_publish(10)
        garbage = wait_for(base + "result", 3)
        # Signal readiness for an on-demand challenge, then wait for it.
        print(json.dumps({"ready_for_attest": True}), flush=True)
        second = wait_for(base + "challenge", 2, timeout=30)
        tampered = {
            "nonce": second["nonce"],
            "format": "measurement",
            "token_b64": b64(dev.measurement(bytes.fromhex(second["nonce"]), hashlib.sha256(b"evil").digest())),
        }
        client.publish(base + "evidence", json.dumps(tampered), qos=1).wait_for_publish(10)
        tampered_result = wait_for(base + "result", 4)
        # Quarantined now: telemetry is refused (the session ends), attestation still reachable.
        return {
            "challenge": challenge,
            "first": first,
            "replay": replay,
            "garbage": garbage,
            "on_demand": second,
            "tampered": tampered_result,
        }
    finally:
        client.loop_stop()
        client.disconnect()


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mode", choices=["http", "mqtt"], required=True)
    p.add_argument("--device-id", required=True)
    p.add_argument("--key", required=True, help="device private key (PEM)")
    p.add_argument("--cert", help="device certificate (PEM), for MQTT")
    p.add_argument("--server-ca", help="the CA of fleetward's server certificate, for MQTT")
    p.add_argument("--mqtt-port", type=int)
    p.add_argument("--api", help="http://127.0.0.1:PORT")
    p.add_argument("--token", help="operator API token")
    p.add_argument("--other-device", help="another device's id (foreign-nonce scenario)")
    p.add_argument("--good-digest", required=True)
    p.add_argument("--blocked-digest", default="b0" * 32)
    p.add_argument("--bl-digest", default="b1" * 32)
    p.add_argument("--expire-wait", type=float, default=6.0)
    args = p.parse_args()
    key_pem = open(args.key).read()
    dev = Device(args.device_id, key_pem)
    if args.mode == "http":
        result = http_scenarios(args, dev, args.other_device)
    else:
        result = mqtt_scenario(args, dev)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
