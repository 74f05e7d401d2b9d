"""An HTTP proxy in front of a real S3 server that bends chosen requests.

A real store cannot be made to lose an answer, reset a connection or stall halfway
through a body on command; this proxy can, and everything it does not bend is forwarded
to the real store untouched (the signature still checks: the Host header is kept).

`S3Proxy(upstream).rule(fn)` installs a rule: `fn(request) -> Action | None` is asked for
every request (`request.method`, `.path` (unquoted, no query), `.query` (dict),
`.headers`); `None` forwards. Actions:

- `Action.status(503)`: answer that status with an S3 error body, forward nothing;
- `Action.reset()`: close the connection before forwarding anything;
- `Action.lose_answer()`: forward, let the store carry the request out, then close the
  connection without answering;
- `Action.pause(after_bytes, gate)`: forward, send `after_bytes` of the answer's body,
  set `gate.reached`, and wait until the test sets `gate.release` before sending the rest.
- `Action.ignore_condition()`: forward without `If-None-Match`, as a store that ignores
  conditional writes (Garage) effectively does.
- `Action.damage_body()`: forward with one byte of the request body flipped (the
  middle one), as a link that corrupts data in transit would; headers, the signature
  included, are forwarded unchanged, so only an integrity header can catch it.

`proxy.log` lists `(method, path, query, action-name)` of every request seen.

`S3Proxy(upstream).restamp(fn)` rewrites the store's times in what it answers, a thing no
real store can be made to do (S3 stamps every write with its own clock, and cannot backdate
an object): `fn(key) -> datetime | None` is asked for every key an answer names; a
`datetime` replaces that key's `<LastModified>` in ListObjectsV2 and ListObjectVersions
answers (`<Contents>`, `<Version>`, `<DeleteMarker>`), its `<Initiated>` in
ListMultipartUploads answers (`<Upload>`), and the `Last-Modified` header of a HeadObject
or GetObject of the key; `None` leaves it alone. Keys are read from path-style URLs
(`/<bucket>/<key>`, as the harness configures the agent). This lets a test make a real
backup in a real store "old" (e.g. its id's time plus a few minutes) without waiting, and
combines with any action above.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import html
import http.client
import http.server
import re
import socket
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_HOP = {"connection", "expect", "transfer-encoding", "keep-alive", "proxy-connection"}


@dataclass
class Gate:
    """Two events: the proxy sets `reached`; the test sets `release`."""

    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


@dataclass
class Action:
    name: str
    status_code: int = 0
    after_bytes: int = 0
    gate: Gate | None = None

    @staticmethod
    def status(code: int) -> Action:
        return Action("status", status_code=code)

    @staticmethod
    def reset() -> Action:
        return Action("reset")

    @staticmethod
    def lose_answer() -> Action:
        return Action("lose-answer")

    @staticmethod
    def pause(after_bytes: int, gate: Gate) -> Action:
        return Action("pause", after_bytes=after_bytes, gate=gate)

    @staticmethod
    def ignore_condition() -> Action:
        return Action("ignore-condition")

    @staticmethod
    def damage_body() -> Action:
        return Action("damage-body")


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


Rule = Callable[[Request], "Action | None"]

# How long a paused answer waits for the test before going on anyway (a test that
# forgot to release must not hang the suite).
PAUSE_LIMIT_S = 120

Restamp = Callable[[str], "dt.datetime | None"]

# One listed entry of a listing answer, and the tag holding its store time.
_ENTRY = re.compile(rb"<(Contents|Version|DeleteMarker|Upload)>(.*?)</\1>", re.S)
_TIME_TAG = {b"Contents": b"LastModified", b"Version": b"LastModified"}
_TIME_TAG |= {b"DeleteMarker": b"LastModified", b"Upload": b"Initiated"}


def _xml_time(when: dt.datetime) -> bytes:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z").encode()


def _restamp_listing(body: bytes, fn: Restamp, url_encoded: bool) -> bytes:
    def entry(m: re.Match[bytes]) -> bytes:
        inner = m.group(2)
        found = re.search(rb"<Key>(.*?)</Key>", inner, re.S)
        if found is None:
            return m.group(0)
        key = html.unescape(found.group(1).decode())
        if url_encoded:
            key = urllib.parse.unquote(key)
        when = fn(key)
        if when is None:
            return m.group(0)
        tag = _TIME_TAG[m.group(1)]
        stamped = re.sub(
            rb"<%s>[^<]*</%s>" % (tag, tag), b"<%s>%s</%s>" % (tag, _xml_time(when), tag), inner
        )
        return b"<%s>%s</%s>" % (m.group(1), stamped, m.group(1))

    return _ENTRY.sub(entry, body)


class S3Proxy:
    def __init__(self, upstream: str):
        target = urllib.parse.urlsplit(upstream)
        self._host, self._port = target.hostname, target.port
        self._rules: list[Rule] = []
        self._restamps: list[Restamp] = []
        self.log: list[tuple[str, str, dict[str, str], str]] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                split = urllib.parse.urlsplit(self.path)
                req = Request(
                    method=self.command,
                    path=urllib.parse.unquote(split.path),
                    query=dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True)),
                    headers={k.lower(): v for k, v in self.headers.items()},
                )
                action = proxy._decide(req)
                proxy.log.append((req.method, req.path, req.query, action.name))
                if action.name == "status":
                    payload = (
                        f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InjectedFault"
                        f"</Code><Message>injected {action.status_code}</Message></Error>"
                    ).encode()
                    self.send_response_only(action.status_code)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if action.name == "reset":
                    self._reset()
                    return
                conn = http.client.HTTPConnection(proxy._host, proxy._port, timeout=60)
                dropped = set(_HOP)
                if action.name == "ignore-condition":
                    dropped.add("if-none-match")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
                if action.name == "damage-body" and body:
                    damaged = bytearray(body)
                    damaged[len(damaged) // 2] ^= 0x01
                    body = bytes(damaged)
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                if action.name == "lose-answer":
                    resp.read()
                    conn.close()
                    self._reset()
                    return
                self.send_response_only(resp.status)
                # path-style: /<bucket>/<key>; a bucket-level request names no key.
                key = req.path.lstrip("/").partition("/")[2]
                when = proxy._stamp(key) if key else None
                for k, v in resp.getheaders():
                    if k.lower() in _HOP or k.lower() == "content-length":
                        continue
                    if k.lower() == "last-modified" and when is not None:
                        v = email.utils.format_datetime(when.astimezone(dt.UTC), usegmt=True)
                    self.send_header(k, v)
                declared = resp.getheader("Content-Length")
                if self.command == "HEAD":
                    if declared is not None:
                        self.send_header("Content-Length", declared)
                    self.end_headers()
                    resp.read()
                    conn.close()
                    return
                data = resp.read()
                conn.close()
                if proxy._restamps and self.command == "GET" and not key:
                    url_encoded = req.query.get("encoding-type") == "url"
                    data = _restamp_listing(data, proxy._stamp, url_encoded)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if action.name == "pause" and action.gate is not None:
                    self.wfile.write(data[: action.after_bytes])
                    self.wfile.flush()
                    action.gate.reached.set()
                    action.gate.release.wait(PAUSE_LIMIT_S)
                    self.wfile.write(data[action.after_bytes :])
                else:
                    self.wfile.write(data)

            def _reset(self) -> None:
                # SO_LINGER 0: the peer sees a reset, not an orderly close.
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                self.close_connection = True
                self.connection.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def rule(self, fn: Rule) -> S3Proxy:
        self._rules.append(fn)
        return self

    def restamp(self, fn: Restamp) -> S3Proxy:
        """Answers give each key the time `fn(key)` says instead of the store's (see the
        module doc); several: the first that gives a time wins."""
        self._restamps.append(fn)
        return self

    def _stamp(self, key: str) -> dt.datetime | None:
        for fn in self._restamps:
            when = fn(key)
            if when is not None:
                return when
        return None

    def _decide(self, req: Request) -> Action:
        for fn in self._rules:
            action = fn(req)
            if action is not None:
                return action
        return Action("forward")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> S3Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
