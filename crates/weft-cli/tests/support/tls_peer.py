"""A TLS client for weft's tests, built on Python's ssl module (OpenSSL).

usage: tls_peer.py HOST:PORT SNI CA_FILE [--once]

Opens a verified HTTPS/1.1 connection and sends GET /. With --once, prints
{"status", "cert_sha256"} and exits. Otherwise it also makes a second connection
resuming the first one's session, prints {"status", "resumed", "cert_sha256"} as its
ready line, keeps the first connection open, and for every line on stdin sends another
request on it and prints {"status", "cert_sha256"} -- proving a held connection keeps its
session and certificate after the server's certificate files change.
"""
import hashlib
import json
import socket
import ssl
import sys


def main():
    addr, name, ca = sys.argv[1:4]
    once = "--once" in sys.argv[4:]
    host, port = addr.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=ca)

    def connect(session=None):
        raw = socket.create_connection((host, int(port)), timeout=10)
        return ctx.wrap_socket(raw, server_hostname=name, session=session)

    def fingerprint(s):
        return hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()

    def get(s):
        s.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                return 0
            buf += chunk
        head, body = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            k, _, v = line.partition(":")
            if k.strip().lower() == "content-length":
                length = int(v.strip())
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return status

    def report(**fields):
        print(json.dumps(fields), flush=True)

    try:
        first = connect()
    except (ssl.SSLError, OSError) as e:
        report(status=0, error=str(e), cert_sha256="")
        return
    status = get(first)
    if once:
        report(status=status, cert_sha256=fingerprint(first))
        return
    second = connect(first.session)
    get(second)
    report(status=status, resumed=second.session_reused, cert_sha256=fingerprint(first))
    second.close()
    for _ in sys.stdin:
        report(status=get(first), cert_sha256=fingerprint(first))


main()
