"""A fault-injecting TCP proxy in front of a registry: error statuses, resets mid-body and
latency, switchable at runtime, and the byte counts the registry itself cannot report.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from registryfixtures.errors import RegistryError
from registryfixtures.registry import Registry


@dataclass
class RequestRecord:
    """One HTTP request seen by the proxy (HTTP mode only)."""

    method: str
    path: str
    body_bytes: int = 0  # request-body payload bytes forwarded to the registry
    status: int | None = None  # registry's (or the injected) status; None when cut
    fault: str | None = None  # "reset", "status" or None


@dataclass
class _StatusFault:
    count: int
    status: int
    method: re.Pattern[str]
    path: re.Pattern[str]
    retry_after: int | None


@dataclass
class _ResetFault:
    count: int
    after: int
    method: re.Pattern[str]
    path: re.Pattern[str]


@dataclass
class _Head:
    start: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def parse(cls, raw: bytes) -> _Head:
        lines = raw.decode("latin-1").split("\r\n")
        head = cls(lines[0].rstrip("\n"))
        for line in lines[1:]:
            line = line.rstrip("\n")
            if not line:
                continue
            name, _, value = line.partition(":")
            head.headers.append((name.strip(), value.strip()))
        return head

    def get(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def remove(self, name: str) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != name.lower()]

    def has_token(self, name: str, token: str) -> bool:
        return any(token in v.lower().replace(" ", "").split(",")
                   for k, v in self.headers if k.lower() == name.lower())

    def encode(self) -> bytes:
        lines = [self.start, *(f"{k}: {v}" for k, v in self.headers), "", ""]
        return "\r\n".join(lines).encode("latin-1")


class _Closed(Exception):
    """The peer closed or the stream is malformed: drop the connection."""


class _Reader:
    """Buffered reads on a socket without makefile(), so close() really closes the fd."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def readline(self, limit: int = 65536) -> bytes:
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                line = bytes(self.buf[:end + 1])
                del self.buf[:end + 1]
                return line
            if len(self.buf) > limit:
                raise _Closed("line too long")
            if not self._fill():
                line = bytes(self.buf)
                self.buf.clear()
                return line

    def read_some(self, limit: int) -> bytes:
        if not self.buf and not self._fill():
            return b""
        data = bytes(self.buf[:limit])
        del self.buf[:limit]
        return data

    def head(self) -> bytes | None:
        """Read a request/response head; None on a clean EOF before any byte."""
        lines: list[bytes] = []
        size = 0
        while True:
            line = self.readline()
            if not line:
                if lines:
                    raise _Closed("EOF inside a message head")
                return None
            if not lines and line.strip() == b"":
                continue
            lines.append(line)
            size += len(line)
            if size > 256 * 1024:
                raise _Closed("message head too large")
            if line.strip() == b"":
                return b"".join(lines)


_REASONS = {429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable", 504: "Gateway Timeout"}
_ERROR_CODES = {429: "TOOMANYREQUESTS", 503: "UNAVAILABLE"}


class FaultProxy:
    """TCP proxy on 127.0.0.1 in front of a registry, with faults switchable at runtime.

    HTTP mode (a plain-HTTP registry) parses HTTP/1.1 so faults can target requests by
    method/path regex: ``fail_next`` answers with an error status, ``reset_after`` cuts a
    request body after N bytes with a TCP RST, ``set_latency`` delays each request, and
    :attr:`requests` records every request with its body bytes and status.

    Raw mode (a TLS registry; bytes stay encrypted end to end, so the CA and hostname still
    verify) only counts bytes, adds latency per chunk and resets a connection after N bytes
    of its client->registry stream (TLS records included); ``fail_next`` is not available.
    """

    def __init__(self, upstream: Registry | str, *, http_mode: bool | None = None,
                 scheme: str | None = None) -> None:
        if isinstance(upstream, Registry):
            self.upstream = upstream.host
            tls = upstream.tls
        else:
            self.upstream = upstream
            tls = scheme == "https"
        self.http_mode = (not tls) if http_mode is None else http_mode
        self.scheme = scheme or ("https" if tls else "http")
        up_host, _, up_port = self.upstream.rpartition(":")
        self._up_addr = (up_host, int(up_port))
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._threads: set[threading.Thread] = set()
        self._sockets: set[socket.socket] = set()
        self._stopping = threading.Event()
        self.port = 0
        self._latency = 0.0
        self._status_faults: list[_StatusFault] = []
        self._reset_faults: list[_ResetFault] = []
        self._raw_resets: list[list[int]] = []  # [after, count]
        self._requests: list[RequestRecord] = []
        self.bytes_upstream = 0  # every byte forwarded client -> registry
        self.bytes_downstream = 0  # every byte forwarded registry -> client
        self.connections = 0

    # -- addresses --------------------------------------------------------------------
    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    # -- fault configuration (thread-safe) --------------------------------------------
    def passthrough(self) -> None:
        """Drop all pending faults and latency."""
        with self._lock:
            self._status_faults.clear()
            self._reset_faults.clear()
            self._raw_resets.clear()
            self._latency = 0.0

    def set_latency(self, seconds: float) -> None:
        """Delay each request (HTTP mode) or each client chunk (raw mode) by ``seconds``."""
        with self._lock:
            self._latency = seconds

    def fail_next(self, count: int = 1, status: int = 500, *, method: str = ".*",
                  path: str = "", retry_after: int | None = None) -> None:
        """Answer the next ``count`` requests whose method fullmatches ``method`` and whose
        path+query contains a match of ``path`` with ``status`` (connection then closes)."""
        if not self.http_mode:
            raise RegistryError("status injection needs HTTP mode (plain-HTTP upstream)")
        with self._lock:
            self._status_faults.append(_StatusFault(
                count, status, re.compile(method), re.compile(path), retry_after))

    def reset_after(self, nbytes: int, count: int = 1, *, method: str = ".*",
                    path: str = r"/blobs/uploads/") -> None:
        """Reset (TCP RST, both sides) the next ``count`` matching requests whose body is
        longer than ``nbytes``, after forwarding exactly ``nbytes`` body bytes. In raw mode,
        the next ``count`` connections that send more than ``nbytes`` bytes."""
        with self._lock:
            if self.http_mode:
                self._reset_faults.append(_ResetFault(
                    count, nbytes, re.compile(method), re.compile(path)))
            else:
                self._raw_resets.append([nbytes, count])

    # -- counters ---------------------------------------------------------------------
    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    @property
    def body_bytes_upstream(self) -> int:
        with self._lock:
            return sum(r.body_bytes for r in self._requests)

    def blob_upload_bytes(self, repo: str | None = None) -> int:
        """Request-body bytes sent to blob-upload URLs (POST/PATCH/PUT .../blobs/uploads/)."""
        pattern = re.compile(
            r"^/v2/" + (re.escape(repo) if repo else ".+") + r"/blobs/uploads/")
        with self._lock:
            return sum(r.body_bytes for r in self._requests if pattern.search(r.path))

    def reset_counters(self) -> None:
        with self._lock:
            self._requests.clear()
            self.bytes_upstream = 0
            self.bytes_downstream = 0
            self.connections = 0

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> Self:
        if self._listener is not None:
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        self.port = int(listener.getsockname()[1])
        self._listener = listener
        self._stopping.clear()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"fault-proxy-{self.port}", daemon=True)
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        self._stopping.set()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
        with self._lock:
            sockets = list(self._sockets)
            threads = list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        listener = self._listener
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            handler = self._serve_http if self.http_mode else self._serve_raw
            thread = threading.Thread(target=self._run, args=(handler, client), daemon=True)
            with self._lock:
                self.connections += 1
                self._threads.add(thread)
                self._sockets.add(client)
            thread.start()

    def _run(self, handler: Callable[[socket.socket], None], client: socket.socket) -> None:
        try:
            handler(client)
        except (OSError, _Closed, ValueError):
            pass
        finally:
            self._close(client)
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _connect_upstream(self) -> socket.socket:
        sock = socket.create_connection(self._up_addr, timeout=60)
        sock.settimeout(None)
        with self._lock:
            self._sockets.add(sock)
        return sock

    def _close(self, sock: socket.socket | None, *, rst: bool = False) -> None:
        if sock is None:
            return
        # shutdown() wakes a thread blocked in recv() on this socket (close() alone does
        # not); with SO_LINGER 0, SHUT_RD sends nothing and the close() then sends a RST.
        with contextlib.suppress(OSError):
            if rst:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RD)
            else:
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
        with self._lock:
            self._sockets.discard(sock)

    def _send_up(self, sock: socket.socket, data: bytes) -> None:
        sock.sendall(data)
        with self._lock:
            self.bytes_upstream += len(data)

    def _send_down(self, sock: socket.socket, data: bytes) -> None:
        sock.sendall(data)
        with self._lock:
            self.bytes_downstream += len(data)

    # -- raw mode ---------------------------------------------------------------------
    def _serve_raw(self, client: socket.socket, initial: bytes = b"") -> None:
        upstream = self._connect_upstream()
        cut = False
        if initial:
            self._send_up(upstream, initial)

        def pump_down() -> None:
            try:
                while True:
                    data = upstream.recv(65536)
                    if not data:
                        break
                    self._send_down(client, data)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    client.shutdown(socket.SHUT_WR)

        down = threading.Thread(target=pump_down, daemon=True)
        down.start()
        sent = 0
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    with contextlib.suppress(OSError):
                        upstream.shutdown(socket.SHUT_WR)
                    break
                with self._lock:
                    latency = self._latency
                if latency:
                    time.sleep(latency)
                limit = self._raw_cut_point(sent, len(data))
                if limit is not None:
                    self._send_up(upstream, data[:limit])
                    cut = True
                    break
                self._send_up(upstream, data)
                sent += len(data)
        finally:
            if cut:
                self._close(client, rst=True)
                self._close(upstream, rst=True)
            down.join(timeout=60)
            self._close(upstream)

    def _raw_cut_point(self, sent: int, size: int) -> int | None:
        with self._lock:
            for fault in self._raw_resets:
                after, count = fault
                if count > 0 and sent + size > after:
                    fault[1] -= 1
                    return max(0, after - sent)
        return None

    # -- HTTP mode --------------------------------------------------------------------
    def _match_status(self, method: str, path: str) -> _StatusFault | None:
        with self._lock:
            for fault in self._status_faults:
                if fault.count > 0 and fault.method.fullmatch(method) and fault.path.search(path):
                    fault.count -= 1
                    return fault
        return None

    def _reset_candidate(self, method: str, path: str) -> _ResetFault | None:
        with self._lock:
            for fault in self._reset_faults:
                if fault.count > 0 and fault.method.fullmatch(method) and fault.path.search(path):
                    return fault
        return None

    def _consume_reset(self, fault: _ResetFault) -> bool:
        with self._lock:
            if fault.count > 0:
                fault.count -= 1
                return True
        return False

    def _serve_http(self, client: socket.socket) -> None:
        reader = _Reader(client)
        if not reader._fill():
            return
        if reader.buf[0] == 0x16:
            # A TLS ClientHello (clients probe HTTPS first with --tls-verify=false): let the
            # registry answer it as it would, instead of waiting for a request line.
            self._serve_raw(client, bytes(reader.buf))
            return
        upstream: socket.socket | None = None
        up_reader: _Reader | None = None
        try:
            while True:
                raw = reader.head()
                if raw is None:
                    return
                head = _Head.parse(raw)
                parts = head.start.split(" ")
                if len(parts) < 3:
                    raise _Closed("bad request line")
                method, target, version = parts[0], parts[1], parts[2]
                record = RequestRecord(method, target)
                with self._lock:
                    self._requests.append(record)
                    latency = self._latency
                expect = head.has_token("Expect", "100-continue")
                framing = self._request_framing(head)
                status_fault = self._match_status(method, target)
                if status_fault is not None:
                    if not expect:
                        self._body(reader, None, framing, record, None, count=False)
                    self._inject(client, status_fault, record)
                    return
                if latency:
                    time.sleep(latency)
                if upstream is None:
                    upstream = self._connect_upstream()
                    up_reader = _Reader(upstream)
                assert up_reader is not None
                if expect:
                    head.remove("Expect")
                    if framing != 0:
                        self._send_down(client, b"HTTP/1.1 100 Continue\r\n\r\n")
                self._send_up(upstream, head.encode())
                reset = self._reset_candidate(method, target)
                if not self._body(reader, upstream, framing, record, reset, count=True):
                    record.fault = "reset"
                    self._close(client, rst=True)
                    self._close(upstream, rst=True)
                    return
                keep = self._relay_response(up_reader, client, method, record)
                if (not keep or head.has_token("Connection", "close")
                        or version == "HTTP/1.0"):
                    return
        finally:
            self._close(upstream)

    @staticmethod
    def _request_framing(head: _Head) -> int | None:
        """Body length, or None for chunked."""
        if head.has_token("Transfer-Encoding", "chunked"):
            return None
        length = head.get("Content-Length")
        return int(length) if length else 0

    def _body(self, reader: _Reader, upstream: socket.socket | None, framing: int | None,
              record: RequestRecord, reset: _ResetFault | None, *, count: bool) -> bool:
        """Forward (or, without upstream, discard) a request body; False when it was cut."""
        sent = 0

        def forward(data: bytes) -> None:
            if upstream is not None:
                self._send_up(upstream, data)

        def payload(remaining: int) -> bool:
            nonlocal sent, reset
            while remaining > 0:
                want = min(remaining, 65536)
                if reset is not None:
                    if sent >= reset.after:
                        if self._consume_reset(reset):
                            return False
                        reset = None
                    else:
                        want = min(want, reset.after - sent)
                data = reader.read_some(want)
                if not data:
                    raise _Closed("EOF inside a request body")
                forward(data)
                sent += len(data)
                remaining -= len(data)
                if count:
                    with self._lock:
                        record.body_bytes += len(data)
            return True

        if framing is not None:
            return payload(framing)
        while True:
            line = reader.readline()
            if not line:
                raise _Closed("EOF inside a chunked body")
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError as exc:
                raise _Closed("bad chunk size") from exc
            if size == 0:
                forward(line)
                while True:
                    trailer = reader.readline()
                    if not trailer:
                        raise _Closed("EOF inside trailers")
                    forward(trailer)
                    if trailer.strip() == b"":
                        return True
            if reset is not None and sent >= reset.after and self._consume_reset(reset):
                return False
            forward(line)
            if not payload(size):
                return False
            forward(reader.readline())

    def _inject(self, client: socket.socket, fault: _StatusFault,
                record: RequestRecord) -> None:
        code = _ERROR_CODES.get(fault.status, "UNKNOWN")
        body = json.dumps({"errors": [{"code": code, "message": "injected by FaultProxy",
                                       "detail": None}]}).encode()
        lines = [f"HTTP/1.1 {fault.status} {_REASONS.get(fault.status, 'Error')}",
                 "Content-Type: application/json", f"Content-Length: {len(body)}",
                 "Docker-Distribution-Api-Version: registry/2.0", "Connection: close"]
        if fault.retry_after is not None:
            lines.append(f"Retry-After: {fault.retry_after}")
        with self._lock:
            record.status = fault.status
            record.fault = "status"
        self._send_down(client, ("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)

    def _relay_response(self, up: _Reader, client: socket.socket, method: str,
                        record: RequestRecord) -> bool:
        """Forward one response; return whether the connection may be reused."""
        while True:
            raw = up.head()
            if raw is None:
                raise _Closed("registry closed the connection")
            head = _Head.parse(raw)
            status = int(head.start.split(" ")[1])
            if 100 <= status < 200 and status != 101:
                self._send_down(client, raw)
                continue
            break
        with self._lock:
            record.status = status  # before the client can see the response
        self._send_down(client, raw)
        keep = not head.has_token("Connection", "close")
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return keep
        if head.has_token("Transfer-Encoding", "chunked"):
            while True:
                line = up.readline()
                if not line:
                    raise _Closed("EOF in chunked response")
                self._send_down(client, line)
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while True:
                        trailer = up.readline()
                        self._send_down(client, trailer)
                        if not trailer or trailer.strip() == b"":
                            return keep
                self._copy(up, client, size + 2)
        length = head.get("Content-Length")
        if length is not None:
            self._copy(up, client, int(length))
            return keep
        while data := up.read_some(65536):
            self._send_down(client, data)
        return False

    def _copy(self, src: _Reader, dst: socket.socket, size: int) -> None:
        while size > 0:
            data = src.read_some(min(size, 65536))
            if not data:
                raise _Closed("EOF in response body")
            self._send_down(dst, data)
            size -= len(data)
