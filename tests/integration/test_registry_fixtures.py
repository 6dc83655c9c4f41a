"""The loopback registries and the fault proxy behave like the real thing, over real HTTP.

Set-up and read-back go through nestbuild's own client (``Registry.client()``); what a client
hides - challenges, statuses it would retry, tokens without access - is asked with one raw
HTTP request at a time.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from cryptography import x509

from nestbuild._registry import client as nbclient
from nestbuild._registry.client import RegistryClient
from tests.fixtures.registry import FaultProxy, Registry, RegistryError, parse_scope

#: The components this file runs itself (tests/conftest.py adds the fixtures' ones).
pytestmark = [pytest.mark.registry]

ROOT = Path(__file__).resolve().parents[2]
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
EMPTY = b"{}"


def repo() -> str:
    """A fresh repository name, since registries are shared by the session."""
    return f"test/{uuid.uuid4().hex[:10]}"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def basic(username: str | None, password: str | None) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode())
            .decode()}


def raw(method: str, url: str, body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        context: ssl.SSLContext | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One HTTP request and nothing else: (status, headers, body)."""
    parts = urllib.parse.urlsplit(url)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.netloc, timeout=30, context=context)
    else:
        conn = http.client.HTTPConnection(parts.netloc, timeout=30)
    try:
        conn.request(method, urllib.parse.urlunsplit(("", "", parts.path, parts.query, "")),
                     body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def put_blob(client: RegistryClient, name: str, data: bytes) -> str:
    digest = sha256(data)
    client.put_blob(name, data, digest, len(data))
    return digest


def push_image(client: RegistryClient, name: str, tag: str, layers: list[bytes]) -> str:
    """A minimal OCI image (config + layers), skipping blobs the registry has."""
    descs = []
    for layer in layers:
        if not client.has_blob(name, sha256(layer)):
            put_blob(client, name, layer)
        descs.append({"mediaType": OCI_LAYER, "size": len(layer), "digest": sha256(layer)})
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in descs]}},
                        sort_keys=True).encode()
    if not client.has_blob(name, sha256(config)):
        put_blob(client, name, config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "size": len(config),
                                      "digest": sha256(config)},
                           "layers": descs}, sort_keys=True).encode()
    return client.put_manifest(name, tag, manifest, OCI_MANIFEST)


def push_and_read_back(client: RegistryClient) -> None:
    """A blob upload and an OCI manifest by exact bytes, then both read back."""
    name = repo()
    blob = os.urandom(4096)
    assert put_blob(client, name, blob) == sha256(blob)
    assert put_blob(client, name, EMPTY) == sha256(EMPTY)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": sha256(EMPTY), "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": sha256(blob),
                    "size": len(blob)}],
    }, indent=1).encode()
    assert client.put_manifest(name, "v1", manifest, OCI_MANIFEST) == sha256(manifest)
    # the registry keeps the exact bytes, their media type and their digest
    assert client.get_manifest(name, "v1") == (manifest, OCI_MANIFEST)
    assert client.resolve(name, "v1") == sha256(manifest)
    assert client.get_blob(name, sha256(blob)) == blob
    assert client.has_blob(name, sha256(blob))
    assert not client.has_blob(name, sha256(b"missing"))


# -- registries --------------------------------------------------------------------------


def test_plain_registry_push_and_pull(registry: Registry) -> None:
    assert registry.host.startswith("127.0.0.1:")
    assert registry.url == f"http://{registry.host}"
    assert registry.ca_cert is None and registry.username is None
    name = repo()
    blob = os.urandom(4096)
    status, headers, body = raw("POST", f"{registry.url}/v2/{name}/blobs/uploads/", b"")
    assert status == 202, body
    location = urllib.parse.urljoin(registry.url, headers["Location"])
    assert "_state=" in location
    status, headers, body = raw("PUT", f"{location}&digest={sha256(blob)}", blob,
                                {"Content-Type": "application/octet-stream"})
    assert status == 201, body
    assert headers["Docker-Content-Digest"] == sha256(blob)
    with registry.client() as client:
        client.check_login()
        assert client.get_blob(name, sha256(blob)) == blob
        push_and_read_back(client)
    assert registry.startup_seconds is not None and registry.startup_seconds < 5
    assert registry.log_path.is_file()
    assert any(size == 4096 for size in registry.stored_blobs().values())


def test_tls_registry_needs_credentials(tls_registry: Registry) -> None:
    ctx = tls_registry.ssl_context()
    status, headers, _ = raw("GET", f"{tls_registry.url}/v2/", context=ctx)
    assert status == 401
    assert (headers["WWW-Authenticate"] or "").startswith("Basic realm=")
    wrong = basic(tls_registry.username, "wrong")
    assert raw("GET", f"{tls_registry.url}/v2/", headers=wrong, context=ctx)[0] == 401
    with tls_registry.client() as client:
        client.check_login()
        push_and_read_back(client)
    auths = json.loads(tls_registry.auth_file.read_text())["auths"]
    user, _, password = base64.b64decode(auths[tls_registry.host]["auth"]).decode().partition(":")
    assert (user, password) == (tls_registry.username, tls_registry.password)


def test_tls_is_verified_against_the_generated_ca(tls_registry: Registry) -> None:
    assert tls_registry.ca_cert is not None
    port = int(tls_registry.host.rpartition(":")[2])
    trusting = ssl.create_default_context(cafile=str(tls_registry.ca_cert))
    for name in ("127.0.0.1", "localhost"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, \
                trusting.wrap_socket(sock, server_hostname=name) as tls:
            assert tls.version() is not None
    with pytest.raises(ssl.SSLCertVerificationError), \
            socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        ssl.create_default_context().wrap_socket(sock, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError), \
            socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        trusting.wrap_socket(sock, server_hostname="registry.example")


def test_cert_dir_is_laid_out_like_certs_d(tls_registry: Registry) -> None:
    cert_dir = tls_registry.cert_dir
    assert cert_dir.name == tls_registry.host and cert_dir.parent.name == "certs.d"
    assert sorted(p.name for p in cert_dir.iterdir()) == ["ca.crt", "client.cert", "client.key"]
    assert tls_registry.ca_cert is not None
    assert (cert_dir / "ca.crt").read_bytes() == tls_registry.ca_cert.read_bytes()
    ca = x509.load_pem_x509_certificate((cert_dir / "ca.crt").read_bytes())
    client = x509.load_pem_x509_certificate((cert_dir / "client.cert").read_bytes())
    client.verify_directly_issued_by(ca)
    alias = tls_registry.write_cert_dir("127.0.0.1:1", cert_dir.parent.parent / "alias")
    assert (alias / "client.key").stat().st_mode & 0o077 == 0


def test_mutual_tls_registry_requires_the_client_cert(tmp_path: Path) -> None:
    with Registry("tls", root=tmp_path, client_auth=True) as reg:
        assert reg.ca_cert is not None
        no_cert = ssl.create_default_context(cafile=str(reg.ca_cert))
        with pytest.raises((ssl.SSLError, ConnectionError)):
            raw("GET", f"{reg.url}/v2/", headers=basic(reg.username, reg.password),
                context=no_cert)
        with reg.client() as client:
            client.check_login()


def test_token_registry_challenges_and_accepts_tokens(token_registry: Registry) -> None:
    name = repo()
    ctx = token_registry.ssl_context()
    uploads = f"{token_registry.url}/v2/{name}/blobs/uploads/"
    status, headers, _ = raw("POST", uploads, b"", context=ctx)
    assert status == 401
    # nestbuild's own parser: the challenge is what its client answers
    scheme, params = nbclient._parse_challenge(headers["WWW-Authenticate"] or "")
    assert scheme == "bearer"
    assert params["realm"] == token_registry.token_realm
    assert params["service"] == "nestbuild-test-registry"
    kind, scoped, actions = parse_scope(params["scope"])  # action order varies (Go map)
    assert (kind, scoped, sorted(actions)) == ("repository", name, ["pull", "push"])
    assert (token_registry.token_realm or "").startswith("https://127.0.0.1:")

    query = urllib.parse.urlencode({"service": "nestbuild-test-registry",
                                    "scope": f"repository:{name}:pull,push"})
    token_url = f"{token_registry.token_realm}?{query}"
    # an anonymous token carries no access: the registry still refuses
    status, _, body = raw("GET", token_url, context=ctx)
    assert status == 200, body
    bearer = {"Authorization": "Bearer " + json.loads(body)["token"]}
    status, headers, _ = raw("POST", uploads, b"", bearer, context=ctx)
    assert status == 401
    assert 'error="insufficient_scope"' in (headers["WWW-Authenticate"] or "")

    wrong = basic(token_registry.username, "wrong")
    assert raw("GET", token_url, headers=wrong, context=ctx)[0] == 401

    right = basic(token_registry.username, token_registry.password)
    status, _, body = raw("GET", token_url, headers=right, context=ctx)
    assert status == 200, body
    bearer = {"Authorization": "Bearer " + json.loads(body)["access_token"]}
    assert raw("POST", uploads, b"", bearer, context=ctx)[0] == 202
    with token_registry.client() as client:
        push_and_read_back(client)
    assert token_registry.token_service is not None
    grants = token_registry.token_service.grants
    assert any(g.account == token_registry.username and g.granted for g in grants)


# -- fault proxy -------------------------------------------------------------------------


@pytest.fixture
def via_proxy(registry: Registry, fault_proxy: FaultProxy) -> Iterator[RegistryClient]:
    """nestbuild's client through the proxy, without retries: every fault reaches the test."""
    with registry.client(fault_proxy.host, retries=0) as client:
        yield client


def test_proxy_counts_only_the_changed_layer(fault_proxy: FaultProxy,
                                            via_proxy: RegistryClient) -> None:
    name = repo()
    base, app1, app2 = os.urandom(50_000), os.urandom(7_000), os.urandom(9_000)
    push_image(via_proxy, name, "v1", [base, app1])
    first = fault_proxy.blob_upload_bytes(name)
    assert first >= len(base) + len(app1)
    fault_proxy.reset_counters()
    push_image(via_proxy, name, "v2", [base, app2])
    config_and_layer = fault_proxy.blob_upload_bytes(name)
    assert len(app2) <= config_and_layer < len(app2) + 1000  # + the small config blob
    assert fault_proxy.bytes_upstream > config_and_layer
    assert all(r.status is not None for r in fault_proxy.requests)
    assert via_proxy.get_manifest(name, "v2") is not None


def test_proxy_reset_breaks_an_upload_mid_body(registry: Registry, fault_proxy: FaultProxy,
                                              via_proxy: RegistryClient) -> None:
    name = repo()
    blob = os.urandom(256 * 1024)
    fault_proxy.reset_after(10_000, method="PUT|PATCH")
    # streamed: a bytes body cut on a kept-alive connection is sent again at once
    with pytest.raises(nbclient.RegistryError):
        via_proxy.put_blob(name, io.BytesIO(blob), sha256(blob), len(blob))
    cut = [r for r in fault_proxy.requests if r.fault == "reset"]
    assert len(cut) == 1 and cut[0].body_bytes == 10_000 and cut[0].status is None
    assert fault_proxy.blob_upload_bytes(name) == 10_000
    with registry.client() as direct:
        assert not direct.has_blob(name, sha256(blob))
        # the fault is used up: a retry goes through
        assert put_blob(via_proxy, name, blob) == sha256(blob)
        assert direct.get_blob(name, sha256(blob)) == blob


def test_proxy_reset_cuts_a_chunked_patch(fault_proxy: FaultProxy) -> None:
    """Go clients (containers/image) stream PATCH bodies with chunked encoding."""
    name = repo()
    uploads = f"{fault_proxy.url}/v2/{name}/blobs/uploads/"
    location = raw("POST", uploads, b"")[1]["Location"] or ""
    fault_proxy.reset_after(5000, method="PATCH")
    conn = http.client.HTTPConnection(fault_proxy.host, timeout=10)
    pieces = [os.urandom(3000) for _ in range(4)]
    with pytest.raises((OSError, http.client.HTTPException)):
        conn.request("PATCH", location.split(fault_proxy.host, 1)[1], body=iter(pieces),
                     headers={"Content-Type": "application/octet-stream"})
        conn.getresponse()
    conn.close()
    cut = fault_proxy.requests[-1]
    assert (cut.method, cut.fault, cut.body_bytes) == ("PATCH", "reset", 5000)
    # without a fault the same chunked framing passes through intact
    conn = http.client.HTTPConnection(fault_proxy.host, timeout=10)
    path = (raw("POST", uploads, b"")[1]["Location"] or "").split(fault_proxy.host, 1)[1]
    conn.request("PATCH", path, body=iter(pieces),
                 headers={"Content-Type": "application/octet-stream"})
    answer = conn.getresponse()
    answer.read()
    conn.close()
    assert answer.status == 202 and answer.getheader("Range") == "0-11999"
    assert fault_proxy.requests[-1].body_bytes == 12_000


def test_proxy_injects_error_statuses(registry: Registry, fault_proxy: FaultProxy,
                                      via_proxy: RegistryClient) -> None:
    name = repo()
    fault_proxy.fail_next(2, 503, method="PUT", path="/manifests/")
    fault_proxy.fail_next(1, 429, method="HEAD", retry_after=3)
    status, headers, _ = raw("HEAD", f"{fault_proxy.url}/v2/{name}/blobs/{sha256(b'x')}")
    assert status == 429 and headers["Retry-After"] == "3"
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                                      "digest": sha256(EMPTY), "size": 2},
                           "layers": []}).encode()
    put_blob(via_proxy, name, EMPTY)
    for _ in range(2):
        status, _, body = raw("PUT", f"{fault_proxy.url}/v2/{name}/manifests/v1", manifest,
                              {"Content-Type": OCI_MANIFEST})
        assert status == 503
        assert json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
    assert via_proxy.put_manifest(name, "v1", manifest, OCI_MANIFEST) == sha256(manifest)
    statuses = [(r.method, r.status, r.fault) for r in fault_proxy.requests]
    assert statuses.count(("PUT", 503, "status")) == 2
    assert ("PUT", 201, None) in statuses
    # an injected failure on a request with a body answers cleanly (body drained first)
    fault_proxy.fail_next(1, 500, method="PATCH")
    blob = os.urandom(100_000)
    with registry.client(fault_proxy.host, retries=0, chunk_size=60_000) as chunked, \
            pytest.raises(nbclient.RegistryError, match="HTTP 500"):
        chunked.put_blob(name, io.BytesIO(blob), sha256(blob), len(blob))


def test_proxy_latency_and_passthrough(fault_proxy: FaultProxy) -> None:
    fault_proxy.set_latency(0.3)
    began = time.monotonic()
    assert raw("GET", f"{fault_proxy.url}/v2/")[0] == 200
    assert time.monotonic() - began >= 0.3
    fault_proxy.fail_next(5, 500)
    fault_proxy.passthrough()
    began = time.monotonic()
    assert raw("GET", f"{fault_proxy.url}/v2/")[0] == 200
    assert time.monotonic() - began < 0.3


def test_raw_proxy_in_front_of_tls(tls_registry: Registry) -> None:
    """TLS passes through untouched (the CA still verifies); bytes and resets still work."""
    with FaultProxy(tls_registry) as proxy:
        assert not proxy.http_mode and proxy.url.startswith("https://127.0.0.1:")
        name = repo()
        blob = os.urandom(100_000)
        with tls_registry.client(proxy.host, retries=0) as client:
            put_blob(client, name, blob)
            assert proxy.bytes_upstream > len(blob)
            with pytest.raises(RegistryError):
                proxy.fail_next(1)
            proxy.reset_after(20_000)
            second = os.urandom(100_000)
            # a fresh connection (a kept-alive one is already past 20 000 bytes), and a
            # streamed body: a replayable one cut on a reused connection is sent again
            with tls_registry.client(proxy.host, retries=0) as fresh, \
                    pytest.raises(nbclient.RegistryError):
                fresh.put_blob(name, io.BytesIO(second), sha256(second), len(second))
            assert client.has_blob(name, sha256(blob))


def test_serve_cli_prints_json_and_stops_on_sigterm() -> None:
    package = ROOT / "registry-fixtures" / "registryfixtures"
    with subprocess.Popen([sys.executable, str(package), "serve", "--mode", "tls", "--proxy"],
                          stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            info = json.loads(proc.stdout.readline())
            assert info["host"].startswith("127.0.0.1:") and Path(info["ca_cert"]).is_file()
            ctx = ssl.create_default_context(cafile=info["ca_cert"])
            for url in (info["url"], info["proxy"]["url"]):
                credentials = basic(info["username"], info["password"])
                assert raw("GET", f"{url}/v2/", headers=credentials, context=ctx)[0] == 200
        finally:
            proc.terminate()
            assert proc.wait(timeout=10) == 0
    assert not Path(info["storage_dir"]).exists()


def test_proxy_handles_expect_continue_and_tls_probes(fault_proxy: FaultProxy) -> None:
    """curl sends ``Expect: 100-continue``; Go clients probe HTTPS first on insecure hosts."""
    name = repo()
    _, headers, _ = raw("POST", f"{fault_proxy.url}/v2/{name}/blobs/uploads/", b"")
    location = (headers["Location"] or "").split(fault_proxy.host, 1)[1]
    blob = os.urandom(2000)
    with socket.create_connection(("127.0.0.1", fault_proxy.port), timeout=5) as sock:
        sock.sendall(
            f"PUT {location}&digest={sha256(blob)} HTTP/1.1\r\nHost: {fault_proxy.host}\r\n"
            f"Content-Length: {len(blob)}\r\nExpect: 100-continue\r\n"
            "Connection: close\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(blob)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 201 Created"), answer
    began = time.monotonic()
    with pytest.raises(ssl.SSLError), \
            socket.create_connection(("127.0.0.1", fault_proxy.port), timeout=5) as sock:
        ssl.create_default_context().wrap_socket(sock, server_hostname="127.0.0.1")
    assert time.monotonic() - began < 2


def test_start_failure_reports_the_log_and_env_is_scrubbed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # containers tools' variable; distribution would read it as the config key auth.file
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "auth.json"))
    with Registry("plain", root=tmp_path / "ok") as ok, socket.socket() as busy:
        with ok.client() as client:
            client.check_login()
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = Registry("plain", root=tmp_path / "taken", port=busy.getsockname()[1])
        with pytest.raises(RegistryError, match="address already in use"):
            taken.start()
        assert not taken.running
