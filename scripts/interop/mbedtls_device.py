#!/usr/bin/env python3
"""An STM32-style device on Mbed TLS (python-mbedtls binds the C library, 2.28.x, the family
STM32Cube firmware ships): TLS 1.2 only, ECDHE-ECDSA-AES128-GCM-SHA256, P-256 client
certificate, SNI; then MQTT 3.1.1 CONNECT, QoS 1 PUBLISH and DISCONNECT written by hand.

Prints one JSON line: {"tls": ..., "cipher": ..., "connack": N, "puback": bool} or {"error": ...}.
Used by gateway/tests/mbedtls_client.rs.
"""
import argparse
import json
import signal
import socket
import struct
import sys
import time

from mbedtls import pk, tls, x509


def mqtt_frame(header, body):
    out = bytearray([header])
    n = len(body)
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            break
    return bytes(out) + body


def mqtt_str(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


class Reader:
    """Buffers decrypted bytes: Mbed TLS answers WANT_READ until a record has fully arrived, so
    reads are retried (the run is bounded by an alarm)."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def exact(self, n):
        while len(self.buf) < n:
            try:
                # Note: python-mbedtls reads on to fill the request, so a close_notify right
                # behind a refusal CONNACK raises before the CONNACK is returned; refusals are
                # therefore checked with the other clients.
                chunk = self.sock.recv(4096)
            except tls.WantReadError:
                time.sleep(0.005)
                continue
            if not chunk:
                raise ConnectionError("closed by server")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def packet(self):
        header = self.exact(1)[0]
        length, shift = 0, 0
        while True:
            b = self.exact(1)[0]
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        return header, self.exact(length) if length else b""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--server-ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--client-id", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--message", default="hello from mbedtls")
    args = ap.parse_args()

    trust = tls.TrustStore()
    trust.add(x509.CRT.from_PEM(open(args.server_ca).read()))
    cert = x509.CRT.from_PEM(open(args.cert).read())
    key = pk.ECC.from_PEM(open(args.key).read())
    conf = tls.TLSConfiguration(
        trust_store=trust,
        certificate_chain=([cert], key),
        ciphers=["TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256"],
        lowest_supported_version=tls.TLSVersion.TLSv1_2,
        highest_supported_version=tls.TLSVersion.TLSv1_2,
        validate_certificates=True,
    )
    # Blocking sockets (python-mbedtls reports WANT_READ on sockets with a timeout); the whole
    # run is bounded by an alarm instead.
    signal.alarm(20)
    raw = socket.create_connection((args.host, args.port))
    sock = tls.ClientContext(conf).wrap_socket(raw, server_hostname="localhost")
    result = {}
    try:
        sock.do_handshake()
        result["tls"] = str(sock.negotiated_tls_version())
        result["cipher"] = str(sock.cipher())
        body = mqtt_str("MQTT") + bytes([4, 0x02]) + struct.pack(">H", 30) + mqtt_str(args.client_id)
        sock.send(mqtt_frame(0x10, body))
        reader = Reader(sock)
        header, body = reader.packet()
        result["connack"] = body[1] if header >> 4 == 2 and len(body) == 2 else -1
        if result["connack"] == 0:
            sock.send(mqtt_frame(0x32, mqtt_str(args.topic) + struct.pack(">H", 1) + args.message.encode()))
            header, body = reader.packet()
            result["puback"] = header >> 4 == 4 and body == struct.pack(">H", 1)
            sock.send(mqtt_frame(0xE0, b""))
    except Exception as e:  # the test reads the reason
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        try:
            sock.close()
        except Exception:
            pass
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
