#!/usr/bin/env python3
"""A controllable HTTP/2 client for tests/connections.rs, on Python's `h2`
(Debian: python3-h2) over a raw socket, plain (h2c, prior knowledge) or
TLS (ALPN h2).

    client.py idle --port P [--tls CA] --mode MODE [--wait S]
        Opens a connection, gets it to MODE and then sends nothing more
        (it still answers SETTINGS and PING, as any client would). Prints
        JSON: when (seconds after MODE was reached) the server closed the
        connection, and when it sent GOAWAY (null: not within S).
        MODE: silent (nothing after the TLS handshake, or nothing at all
        with --no-handshake), partial-preface (half the HTTP/2 preface),
        preface (preface and SETTINGS, no request), request (one GET
        --path, answered, then nothing).

    client.py stall --port P [--tls CA] --path PATH --streams N --hold S
        Opens N streams GET PATH with an initial stream window of 0 and
        never opens it: the server can send headers but no body byte.
        Holds the connection for S seconds (answering PINGs), then closes
        it. Prints JSON: per stream the status, when its headers came and
        when (if) the server reset it, all in seconds since the streams
        were opened.
"""

import argparse
import json
import select
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.settings

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def connect(args, alpn=True):
    sock = socket.create_connection(("127.0.0.1", args.port), timeout=10)
    if args.tls and not args.no_handshake:
        ctx = ssl.create_default_context(cafile=args.tls)
        if alpn:
            ctx.set_alpn_protocols(["h2"])
        sock = ctx.wrap_socket(sock, server_hostname="127.0.0.1")
        if alpn and sock.selected_alpn_protocol() != "h2":
            sys.exit("server did not select h2 by ALPN")
    sock.setblocking(False)
    return sock


def recv(sock, timeout):
    """Bytes received within `timeout` (b"" on EOF, None if nothing came)."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return sock.recv(65536)
    ready, _, _ = select.select([sock], [], [], timeout)
    if not ready:
        return None
    try:
        return sock.recv(65536)
    except ssl.SSLWantReadError:
        return None
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
        return b""


def send(sock, conn):
    data = conn.data_to_send()
    if not data:
        return
    sock.setblocking(True)
    try:
        sock.sendall(data)
    except OSError:
        pass
    finally:
        sock.setblocking(False)


def new_h2(window=None):
    config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    conn = h2.connection.H2Connection(config=config)
    if window is not None:
        conn.local_settings = h2.settings.Settings(
            client=True,
            initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window},
        )
    conn.initiate_connection()
    return conn


def headers(args, path):
    return [
        (":method", "GET"),
        (":scheme", "https" if args.tls else "http"),
        (":authority", "127.0.0.1:%d" % args.port),
        (":path", path),
        ("accept", "application/vnd.oci.image.manifest.v1+json"),
    ]


def idle(args):
    sock = connect(args, alpn=not args.no_handshake)
    conn = None
    if args.mode == "partial-preface":
        sock.setblocking(True)
        sock.sendall(PREFACE[:12])
        sock.setblocking(False)
    elif args.mode in ("preface", "request"):
        conn = new_h2()
        send(sock, conn)
    if args.mode == "request":
        conn.send_headers(1, headers(args, args.path), end_stream=True)
        send(sock, conn)
        deadline = time.monotonic() + 10
        done = False
        while not done and time.monotonic() < deadline:
            data = recv(sock, 0.5)
            if data == b"":
                sys.exit("connection closed before the response ended")
            if not data:
                continue
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if isinstance(event, h2.events.StreamEnded) and event.stream_id == 1:
                    done = True
            send(sock, conn)
        if not done:
            sys.exit("no complete response to the request")
    start = time.monotonic()
    goaway = None
    closed = None
    while time.monotonic() - start < args.wait:
        data = recv(sock, 0.05)
        if data is None:
            continue
        if data == b"":
            closed = time.monotonic() - start
            break
        if conn is not None:
            try:
                events = conn.receive_data(data)
            except Exception:  # a protocol error: the server is closing
                events = []
            for event in events:
                if isinstance(event, h2.events.ConnectionTerminated) and goaway is None:
                    goaway = time.monotonic() - start
            send(sock, conn)
    print(json.dumps({"mode": args.mode, "closed": closed, "goaway": goaway}))


def stall(args):
    sock = connect(args)
    conn = new_h2(window=0)
    send(sock, conn)
    opened = time.monotonic()
    streams = {}
    for i in range(args.streams):
        sid = 1 + 2 * i
        conn.send_headers(sid, headers(args, args.path), end_stream=True)
        streams[sid] = {"status": None, "headers": None, "reset": None, "data": 0}
    send(sock, conn)
    closed = None
    goaway = None
    while time.monotonic() - opened < args.hold:
        data = recv(sock, 0.05)
        if data is None:
            continue
        now = time.monotonic() - opened
        if data == b"":
            closed = now
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                s = streams[event.stream_id]
                s["headers"] = now
                s["status"] = int(dict(event.headers).get(":status", "0"))
            elif isinstance(event, h2.events.DataReceived):
                streams[event.stream_id]["data"] += len(event.data)
            elif isinstance(event, h2.events.StreamReset):
                streams[event.stream_id]["reset"] = now
            elif isinstance(event, h2.events.ConnectionTerminated):
                goaway = now
        send(sock, conn)
    sock.close()
    print(json.dumps({
        "closed": closed,
        "goaway": goaway,
        "streams": [dict(id=sid, **s) for sid, s in sorted(streams.items())],
    }))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["idle", "stall"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tls", help="CA file: connect with TLS, ALPN h2")
    p.add_argument("--no-handshake", action="store_true",
                   help="with --tls: connect but never start the TLS handshake")
    p.add_argument("--mode", default="silent",
                   choices=["silent", "partial-preface", "preface", "request"])
    p.add_argument("--path", default="/v2/")
    p.add_argument("--wait", type=float, default=10.0)
    p.add_argument("--streams", type=int, default=100)
    p.add_argument("--hold", type=float, default=10.0)
    args = p.parse_args()
    if args.command == "idle":
        idle(args)
    else:
        stall(args)


if __name__ == "__main__":
    main()
