"""The registry client's HTTP layer: proxies from the environment, redirects, loopback.

Real registries (Debian's docker-registry) behind a small forward proxy written here: it
tunnels CONNECT and passes absolute-form requests through, as squid and corporate proxies do.
The registry's name only exists for the proxy, so a request that bypassed it could not connect.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import json
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from nestbuild._registry.client import RegistryClient, RegistryError, is_loopback
from nestbuild._registry.transport import Session
from tests.fixtures.registry import Registry

NAME = "registry.example.test"


class ForwardProxy(socketserver.ThreadingTCPServer):
    """Every tunnel and request goes to ``upstream``, whatever host it names."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        #: (method, request target, Proxy-Authorization) of each connection's first request
        self.seen: list[tuple[str, str, str | None]] = []
        super().__init__(("127.0.0.1", 0), _ProxyHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(socketserver.StreamRequestHandler):
    rbufsize = 0  # unbuffered: what follows the head is piped from the socket itself
    server: ForwardProxy

    def handle(self) -> None:
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            byte = self.rfile.read(1)
            if not byte:
                return
            head += byte
        line, *fields = head.decode("latin-1").split("\r\n")
        method, target, _ = line.split(" ", 2)
        auth = next((f.split(":", 1)[1].strip() for f in fields
                     if f.lower().startswith("proxy-authorization:")), None)
        self.server.seen.append((method, target, auth))
        upstream = socket.create_connection(self.server.upstream)
        if method == "CONNECT":
            self.connection.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            upstream.sendall(head)  # Go's server takes absolute-form targets as they are
        pump = threading.Thread(target=_pipe, args=(upstream, self.connection), daemon=True)
        pump.start()
        _pipe(self.connection, upstream)
        pump.join(5)
        upstream.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY",
                 "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _serve(proxy: ForwardProxy) -> Iterator[ForwardProxy]:
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()


@pytest.fixture
def http_proxy(registry: Registry) -> Iterator[ForwardProxy]:
    yield from _serve(ForwardProxy(("127.0.0.1", registry.port)))


@pytest.fixture
def tls_proxy(tls_registry: Registry) -> Iterator[ForwardProxy]:
    yield from _serve(ForwardProxy(("127.0.0.1", tls_registry.port)))


def test_plain_http_goes_through_http_proxy_with_its_credentials(
        http_proxy: ForwardProxy, proxy_env: pytest.MonkeyPatch) -> None:
    proxy_env.setenv("HTTP_PROXY", http_proxy.url.replace("http://", "http://ci:s%40cret@"))
    with RegistryClient(f"{NAME}:5000", insecure_http=True, backoff=0.01) as client:
        data = b"through the proxy"
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        client.put_blob("proxied/repo", data, digest, len(data))
        assert client.get_blob("proxied/repo", digest) == data
    methods = {(m, t.split("/v2/")[0]) for m, t, _ in http_proxy.seen}
    assert ("POST", f"http://{NAME}:5000") in methods  # absolute-form: the proxy picks the host
    assert {a for _, _, a in http_proxy.seen} == {"Basic " + base64.b64encode(b"ci:s@cret")
                                                  .decode()}


def test_https_is_tunnelled_with_connect(tls_registry: Registry, tls_proxy: ForwardProxy,
                                         proxy_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps(tls_registry.auth_json(NAME)))
    proxy_env.setenv("HTTPS_PROXY", tls_proxy.url)
    # The registry's certificate names 127.0.0.1, not the name only the proxy knows.
    with RegistryClient(NAME, authfile=authfile, tls_verify=False) as client:
        client.check_login()
    assert tls_proxy.seen and all(s[:2] == ("CONNECT", f"{NAME}:443") for s in tls_proxy.seen)


def test_no_proxy_and_loopback_bypass_the_proxy(registry: Registry, http_proxy: ForwardProxy,
                                                proxy_env: pytest.MonkeyPatch) -> None:
    proxy_env.setenv("HTTP_PROXY", http_proxy.url)
    proxy_env.setenv("NO_PROXY", "localhost,.example.test")
    with RegistryClient(f"{NAME}:5000", insecure_http=True, retries=0) as client, \
            pytest.raises(RegistryError, match="cannot resolve the host name"):
        client.has_blob("any/repo", "sha256:" + "0" * 64)
    proxy_env.setenv("NO_PROXY", "")
    proxy_env.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens: must not be used
    with RegistryClient(registry.host) as client:
        assert not client.has_blob("any/repo", "sha256:" + "0" * 64)
    assert http_proxy.seen == []


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1:5000", True), ("127.1.2.3", True), ("localhost:443", True), ("[::1]:5000", True),
    ("[::1]", True), ("128.0.0.1:5000", False), ("127.0.0.256", False),
    ("127.example.com", False), ("registry.example.com", False), ("localhost.evil.com", False),
])
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


class _Redirecting(http.server.BaseHTTPRequestHandler):
    target = ""
    seen: list[dict[str, str]]

    def do_GET(self) -> None:
        self.seen.append(dict(self.headers))
        if self.target:
            self.send_response(307)
            self.send_header("Location", self.target)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            body = b"the blob"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_redirects_are_followed_without_the_registry_credentials() -> None:
    servers = []
    for target in ("", None):
        handler = type("H", (_Redirecting,), {"seen": [], "target": target or ""})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    storage, registry = servers
    registry.RequestHandlerClass.target = (  # type: ignore[attr-defined]
        f"http://127.0.0.1:{storage.server_address[1]}/blob?sig=1")
    session = Session(timeout=10, tls=lambda: pytest.fail("no TLS here"), loopback=is_loopback)
    try:
        resp = session.request("GET", f"http://127.0.0.1:{registry.server_address[1]}/v2/x",
                               headers={"Authorization": "Bearer secret"})
        assert (resp.status_code, resp.content) == (200, b"the blob")
        assert resp.url.endswith("/blob?sig=1")
        assert registry.RequestHandlerClass.seen[0]["Authorization"] == "Bearer secret"  # type: ignore[attr-defined]
        assert "Authorization" not in storage.RequestHandlerClass.seen[0]  # type: ignore[attr-defined]
    finally:
        session.close()
        for server in servers:
            server.shutdown()
            server.server_close()


class _Counting(http.server.BaseHTTPRequestHandler):
    """Keep-alive; counts the connections it is given (one handler per connection)."""

    protocol_version = "HTTP/1.1"
    connections = 0
    lock = threading.Lock()
    release = threading.Event()

    def setup(self) -> None:
        super().setup()
        with _Counting.lock:
            _Counting.connections += 1

    def do_GET(self) -> None:
        if self.path == "/slow":
            _Counting.release.wait(10)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def test_threads_share_the_idle_connections() -> None:
    # A push's upload threads, and a signer's blobs stored side by side on the connections it
    # opened while its key decrypted, take the connections other threads left idle.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    session = Session(timeout=10, tls=lambda: pytest.fail("no TLS here"), loopback=is_loopback)

    def get(path: str) -> None:
        assert session.request("GET", base + path).content == b"ok"

    def in_thread(path: str) -> threading.Thread:
        thread = threading.Thread(target=get, args=(path,))
        thread.start()
        return thread

    try:
        for _ in range(4):  # one thread after another: one connection
            in_thread("/").join()
        assert _Counting.connections == 1
        slow = in_thread("/slow")  # holds its connection: the next request needs another
        in_thread("/").join()
        _Counting.release.set()
        slow.join()
        assert _Counting.connections == 2
        both = [in_thread("/"), in_thread("/")]  # both open ones are idle again
        for thread in both:
            thread.join()
        get("/")
        assert _Counting.connections == 2
    finally:
        session.close()
        server.shutdown()
        server.server_close()
