"""HTTP for the registry client, on the standard library's ``http.client``.

Why not requests (and oras-py, which needs it and jsonschema): importing them costs ~100 ms,
more than a whole ``cosign sign``; every registry command is short, and this is most of it.
What the client needs from HTTP is small, and here it is:

- keep-alive connections, shared by the threads (blobs go up from several at once);
- request bodies as bytes or as a sized iterable (streamed with ``Content-Length``, never
  chunked: registries refuse chunked ``PATCH``), response bodies read whole or streamed;
- redirects followed for GET and HEAD (blob storage behind a CDN), the ``Authorization``
  header dropped when the host changes;
- proxies from ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` (never for loopback), as Go's
  ``ProxyFromEnvironment`` reads them for skopeo and podman;
- one exception, :class:`TransportError`, for everything below HTTP (refused, reset, timed out,
  cut mid-body), with :class:`TLSError` for handshakes.

A connection the server closed while idle is retried once on a fresh one when the body can be
sent again; anything else is for the client's retry policy to decide.
"""

from __future__ import annotations

import base64
import functools
import http.client
import json
import os
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

USER_AGENT = "nestbuild"
MAX_REDIRECTS = 5
#: Idle connections kept open per host: as many as a push's upload threads use at once.
MAX_IDLE = 8
REDIRECTS = frozenset({301, 302, 303, 307, 308})

Body = bytes | Iterable[bytes] | None


class TransportError(Exception):
    """The request got no (complete) HTTP answer: refused, reset, timed out, cut short."""


class BodyTooLarge(TransportError):
    """A response body longer than the caller accepts; the connection is dropped unread."""


class BadURL(TransportError):
    """A URL no request can be made to (a host name with spaces, a redirect to ``file:``):
    asking again cannot help."""


class TLSError(TransportError):
    """The TLS handshake failed; ``untrusted`` when the certificate did not verify."""

    def __init__(self, message: str, *, untrusted: bool) -> None:
        super().__init__(message)
        self.untrusted = untrusted


def describe(exc: BaseException) -> str:
    """A socket, TLS or HTTP-framing error in a few words."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "connection reset"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "connection closed without a response"
    if isinstance(exc, http.client.IncompleteRead):
        return f"connection closed mid-body ({len(exc.partial)} bytes received)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__


def _wrap(exc: BaseException) -> TransportError:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TLSError(describe(exc), untrusted=True)
    if isinstance(exc, ssl.SSLError):
        return TLSError(describe(exc), untrusted=False)
    return TransportError(describe(exc))


_FAILURES = (OSError, http.client.HTTPException)


class Response:
    """An HTTP answer. Bodies of non-streamed requests are already read; a streamed body is
    read with :meth:`iter_content` and the connection is reused once it has been read whole."""

    def __init__(self, url: str, raw: http.client.HTTPResponse,
                 release: Callable[[bool], None]) -> None:
        self.url = url
        self.status_code = raw.status
        self.headers = raw.headers  # case-insensitive ``get``
        self._raw = raw
        self._release: Callable[[bool], None] | None = release
        self._content: bytes | None = None

    def _done(self, reusable: bool) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            release(reusable)

    @property
    def content(self) -> bytes:
        if self._content is None:
            try:
                self._content = self._raw.read()
            except _FAILURES as exc:
                self._done(False)
                raise _wrap(exc) from None
            self._done(True)
        return self._content

    def json(self) -> Any:
        return json.loads(self.content)

    def read_limited(self, limit: int) -> bytes:
        """The whole body of a streamed response, or :class:`BodyTooLarge` when it is longer
        than ``limit`` bytes: by its ``Content-Length``, else as it arrives. A server cannot
        make the client hold more than ``limit`` bytes of it."""
        if self._content is None:
            length = self.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > limit:
                self.close()
                raise BodyTooLarge(f"{length} bytes")
            try:
                data = self._raw.read(limit + 1)
            except _FAILURES as exc:
                self._done(False)
                raise _wrap(exc) from None
            if len(data) > limit:
                self.close()
                raise BodyTooLarge(f"more than {limit} bytes")
            self._content = data
            self._done(self._raw.isclosed())
        if len(self._content) > limit:
            raise BodyTooLarge(f"{len(self._content)} bytes")
        return self._content

    def iter_content(self, size: int) -> Iterator[bytes]:
        if self._content is not None:
            yield self._content
            return
        try:
            while chunk := self._raw.read(size):
                yield chunk
        except _FAILURES as exc:
            self._done(False)
            raise _wrap(exc) from None
        self._content = b""
        self._done(True)

    def close(self) -> None:
        """Give up on an unread body: its connection cannot carry another request."""
        if self._release is not None:
            self._raw.close()
            self._done(False)

    @property
    def links(self) -> dict[str, dict[str, str]]:
        """RFC 8288 ``Link`` header by ``rel`` (tag list pagination)."""
        out: dict[str, dict[str, str]] = {}
        for part in (self.headers.get("Link") or "").split(","):
            target, _, params = part.strip().partition(";")
            if not target.startswith("<") or not target.endswith(">"):
                continue
            link = {"url": target[1:-1]}
            for param in params.split(";"):
                name, _, value = param.strip().partition("=")
                if name:
                    link[name.lower()] = value.strip('"')
            out[link.get("rel", link["url"])] = link
        return out


def _no_proxy(host: str) -> bool:
    rules = os.environ.get("NO_PROXY", os.environ.get("no_proxy", ""))
    name = host.rsplit(":", 1)[0].strip("[]").lower() if not host.endswith("]") else \
        host.strip("[]").lower()
    for rule in (r.strip().lower() for r in rules.split(",")):
        if not rule:
            continue
        if rule == "*":
            return True
        rule = rule.lstrip("*")
        if rule.startswith(".") and (name.endswith(rule) or name == rule[1:]):
            return True
        if name == rule or host.lower() == rule or name.endswith("." + rule):
            return True
    return False


def proxy_for(scheme: str, host: str, *, loopback: bool) -> urllib.parse.SplitResult | None:
    """The proxy the environment names for ``scheme://host``, if any."""
    if loopback or _no_proxy(host):
        return None
    names = ("HTTPS_PROXY", "https_proxy") if scheme == "https" else ("HTTP_PROXY", "http_proxy")
    value = next((os.environ[n] for n in names if os.environ.get(n)), "")
    if not value:
        return None
    if "://" not in value:
        value = "http://" + value
    return urllib.parse.urlsplit(value)


class Session:
    """Connections to one registry (and whatever its redirects and token realm name).

    ``tls`` builds the TLS context on first use (loading the system trust store costs tens of
    milliseconds, which a plain-HTTP loopback registry never needs). ``loopback`` tells which
    hosts never go through a proxy.
    """

    def __init__(self, *, timeout: float, tls: Callable[[], ssl.SSLContext],
                 loopback: Callable[[str], bool]) -> None:
        self.timeout = timeout
        self._tls_factory = tls
        self._tls: ssl.SSLContext | None = None
        self._loopback = loopback
        self._lock = threading.Lock()
        #: Open connections nobody is using, by (scheme, netloc): shared by the threads.
        self._idle: dict[tuple[str, str], list[http.client.HTTPConnection]] = {}
        self._all: list[http.client.HTTPConnection] = []

    def _context(self) -> ssl.SSLContext:
        with self._lock:
            if self._tls is None:
                self._tls = self._tls_factory()
            return self._tls

    def _connect(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        proxy = proxy_for(scheme, netloc, loopback=self._loopback(netloc))
        conn: http.client.HTTPConnection
        if proxy is None:
            conn = (http.client.HTTPSConnection(netloc, timeout=self.timeout,
                                                context=self._context())
                    if scheme == "https" else
                    http.client.HTTPConnection(netloc, timeout=self.timeout))
        else:
            proxy_headers = {}
            if proxy.username is not None:
                userinfo = f"{urllib.parse.unquote(proxy.username)}:" \
                           f"{urllib.parse.unquote(proxy.password or '')}"
                proxy_headers["Proxy-Authorization"] = \
                    "Basic " + base64.b64encode(userinfo.encode()).decode()
            address = proxy.hostname or ""
            if proxy.port:
                address += f":{proxy.port}"
            if scheme == "https":
                conn = http.client.HTTPSConnection(address, timeout=self.timeout,
                                                   context=self._context())
                conn.set_tunnel(netloc, headers=proxy_headers)
            else:
                conn = _ProxiedHTTPConnection(address, timeout=self.timeout)
                conn.proxy_headers = proxy_headers
        with self._lock:
            self._all.append(conn)
        return conn

    def _checkout(self, scheme: str, netloc: str) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection (True: it has carried requests before) or a new one.

        Idle connections are shared by the threads: what a finished upload thread leaves is
        the next one's, and a connection opened ahead of the work (a signer's second upload
        session, opened while its key decrypts) is there, handshake done, when the work starts.
        """
        with self._lock:
            idle = self._idle.get((scheme, netloc))
            conn = idle.pop() if idle else None
        if conn is not None:
            return conn, conn.sock is not None
        return self._connect(scheme, netloc), False

    def _checkin(self, key: tuple[str, str], conn: http.client.HTTPConnection,
                 reusable: bool) -> None:
        """Back among the idle: closed first when its last body was not read whole (it
        reconnects on its next request); closed for good past :data:`MAX_IDLE`."""
        if not reusable:
            conn.close()
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < MAX_IDLE:
                idle.append(conn)
                return
            if conn in self._all:  # not if the session closed meanwhile
                self._all.remove(conn)
        conn.close()

    def request(self, method: str, url: str, *, body: Body = None,
                headers: Mapping[str, str] | None = None, stream: bool = False) -> Response:
        """One request; GET and HEAD follow redirects. Raises :class:`TransportError`."""
        hdrs = {"User-Agent": USER_AGENT, **(headers or {})}
        for _ in range(MAX_REDIRECTS + 1):
            resp = self._send(method, url, body, hdrs)
            location = resp.headers.get("Location")
            follow = method in ("GET", "HEAD") and resp.status_code in REDIRECTS and location
            if not (stream and method == "GET") or follow:
                _ = resp.content  # HEAD: none; the connection is free for the next request
            if not follow or location is None:
                return resp
            target = urllib.parse.urljoin(url, location)
            if urllib.parse.urlsplit(target).scheme not in ("http", "https"):
                raise BadURL(f"redirected to {target[:200]}, which is not HTTP")
            if urllib.parse.urlsplit(target).netloc != urllib.parse.urlsplit(url).netloc:
                hdrs = {k: v for k, v in hdrs.items() if k.lower() != "authorization"}
            url = target
        raise TransportError(f"more than {MAX_REDIRECTS} redirects")

    def _send(self, method: str, url: str, body: Body, headers: dict[str, str]) -> Response:
        parts = urllib.parse.urlsplit(url)
        key = (parts.scheme, parts.netloc)
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        if body is not None and not isinstance(body, bytes) and "Content-Length" not in headers:
            headers = {**headers, "Content-Length": str(len(body))}  # type: ignore[arg-type]
        replayable = body is None or isinstance(body, bytes)
        while True:
            try:
                conn, reused = self._checkout(*key)
            except http.client.InvalidURL as exc:  # a host http.client will not even try
                raise BadURL(describe(exc)) from None
            if isinstance(conn, _ProxiedHTTPConnection):
                target = url
            try:
                conn.request(method, target, body=body, headers=headers)
                raw = conn.getresponse()
            except _FAILURES as exc:
                conn.close()
                stale = isinstance(exc, http.client.RemoteDisconnected | ConnectionResetError
                                   | BrokenPipeError)
                if reused and stale and replayable:
                    continue  # closed by the server while idle: once more, on a fresh one
                raise _wrap(exc) from None
            return Response(url, raw, functools.partial(self._checkin, key, conn))

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
            self._idle.clear()
        for conn in conns:
            conn.close()


class _ProxiedHTTPConnection(http.client.HTTPConnection):
    """Plain HTTP through a proxy: absolute URLs in the request line, proxy credentials
    in a header."""

    proxy_headers: dict[str, str]

    def putrequest(self, method: str, url: str, skip_host: bool = False,
                   skip_accept_encoding: bool = False) -> None:
        super().putrequest(method, url, skip_host=True,
                           skip_accept_encoding=skip_accept_encoding)
        self.putheader("Host", urllib.parse.urlsplit(url).netloc)
        for name, value in self.proxy_headers.items():
            self.putheader(name, value)
