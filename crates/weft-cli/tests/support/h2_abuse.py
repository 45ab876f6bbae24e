"""HTTP/2 abuse for weft's edge tests, using the h2 library (python3-h2) over a raw socket.

usage: h2_abuse.py HOST:PORT SCENARIO

Scenarios (each prints one JSON line with what the server did):
  rapid-reset     open and immediately cancel 500 streams in one burst
                  -> {"goaway": error name or null, "responses": n}
  excess-streams  open 60 concurrent slow requests before reading the server's SETTINGS
                  -> {"refused": streams reset with REFUSED_STREAM, "answered": n}
  header-flood    one request with ~200 KiB of headers
                  -> {"status": code or null, "reset": error name or null, "goaway": ...}
  early-answer    an upload (content-length 1,000,000) that stops after 16 KiB; once its
                  answer has come, a GET on the same connection
                  -> {"status": code, "reset": the upload's reset error name or null,
                      "next": the GET's status or null}
"""
import json
import socket
import sys

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings


def connect(addr):
    host, port = addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=20)
    conn = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    conn.initiate_connection()
    # Room for big header blocks; never limit the server's concurrency on our side.
    conn.update_settings({h2.settings.SettingCodes.MAX_FRAME_SIZE: 16384})
    return sock, conn


def request_headers(authority, path, extra=()):
    return [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", authority),
        (":path", path),
        *extra,
    ]


def pump(sock, conn, until, limit=2000):
    """Reads events until until(events_so_far) is true or the connection ends."""
    seen = []
    for _ in range(limit):
        try:
            data = sock.recv(65536)
        except (socket.timeout, ConnectionResetError):
            break
        if not data:
            break
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            break
        seen.extend(events)
        out = conn.data_to_send()
        if out:
            try:
                sock.sendall(out)
            except OSError:
                break
        if until(seen):
            break
    return seen


def goaway_of(events):
    for e in events:
        if isinstance(e, h2.events.ConnectionTerminated):
            return h2.errors.ErrorCodes(e.error_code).name
    return None


def rapid_reset(addr):
    sock, conn = connect(addr)
    for i in range(500):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, request_headers("x", "/delay/1000"), end_stream=True)
        conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    sock.sendall(conn.data_to_send())
    events = pump(sock, conn, lambda ev: goaway_of(ev) is not None)
    responses = sum(isinstance(e, h2.events.ResponseReceived) for e in events)
    return {"goaway": goaway_of(events), "responses": responses}


def excess_streams(addr):
    sock, conn = connect(addr)
    # Sent before the server's SETTINGS arrive, so the client library cannot hold back.
    ids = []
    for _ in range(60):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, request_headers("x", "/delay/300"), end_stream=True)
        ids.append(sid)
    sock.sendall(conn.data_to_send())
    done = set()
    refused = 0
    answered = 0

    def finished(events):
        nonlocal refused, answered
        for e in events[len(done_events):]:
            done_events.append(e)
            if isinstance(e, h2.events.StreamReset) and e.stream_id not in done:
                done.add(e.stream_id)
                if e.error_code == h2.errors.ErrorCodes.REFUSED_STREAM:
                    refused += 1
            elif isinstance(e, h2.events.StreamEnded) and e.stream_id not in done:
                done.add(e.stream_id)
                answered += 1
        return len(done) >= len(ids) or goaway_of(events) is not None

    done_events = []
    pump(sock, conn, finished)
    return {"refused": refused, "answered": answered}


def header_flood(addr):
    sock, conn = connect(addr)
    extra = [(f"x-flood-{i}", "v" * 1000) for i in range(200)]
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, request_headers("x", "/", extra), end_stream=True)
    sock.sendall(conn.data_to_send())
    events = pump(
        sock,
        conn,
        lambda ev: any(
            isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset, h2.events.ConnectionTerminated))
            for e in ev
        ),
    )
    status = None
    reset = None
    for e in events:
        if isinstance(e, h2.events.ResponseReceived):
            status = int(dict(e.headers)[":status"])
        if isinstance(e, h2.events.StreamReset):
            reset = h2.errors.ErrorCodes(e.error_code).name
    return {"status": status, "reset": reset, "goaway": goaway_of(events)}


def early_answer(addr):
    sock, conn = connect(addr)
    sid = conn.get_next_available_stream_id()
    head = [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "x"),
        (":path", "/upload"),
        ("content-length", "1000000"),
    ]
    conn.send_headers(sid, head, end_stream=False)
    conn.send_data(sid, b"x" * 16384, end_stream=False)
    sock.sendall(conn.data_to_send())

    def stream_event(kind, stream):
        return lambda ev: any(isinstance(e, kind) and e.stream_id == stream for e in ev) or (
            goaway_of(ev) is not None
        )

    # The answer, then (the body being cut) the reset that tells us to stop sending.
    events = pump(sock, conn, stream_event(h2.events.StreamReset, sid))
    status = None
    reset = None
    for e in events:
        if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid:
            status = int(dict(e.headers)[":status"])
        if isinstance(e, h2.events.StreamReset) and e.stream_id == sid:
            reset = h2.errors.ErrorCodes(e.error_code).name
    nxt = conn.get_next_available_stream_id()
    conn.send_headers(nxt, request_headers("x", "/next"), end_stream=True)
    sock.sendall(conn.data_to_send())
    events = pump(sock, conn, stream_event(h2.events.StreamEnded, nxt))
    following = None
    for e in events:
        if isinstance(e, h2.events.ResponseReceived) and e.stream_id == nxt:
            following = int(dict(e.headers)[":status"])
    return {"status": status, "reset": reset, "next": following}


SCENARIOS = {
    "early-answer": early_answer,
    "rapid-reset": rapid_reset,
    "excess-streams": excess_streams,
    "header-flood": header_flood,
}

print(json.dumps(SCENARIOS[sys.argv[2]](sys.argv[1])), flush=True)
