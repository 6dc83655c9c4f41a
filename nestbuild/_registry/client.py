"""The OCI distribution client: what oras-py's ``Registry`` does, and what it gets wrong fixed.

It began as a subclass of ``oras.provider.Registry`` and ended up overriding every method it
used; importing oras-py (requests, jsonschema) then cost more than a whole ``cosign sign``, so
it now stands on :mod:`nestbuild._registry.transport` (the standard library's ``http.client``).
docs/registry-client.md says why each of these matters:

- ``do_request``: auth per scope (Basic and Bearer, tokens cached per repository and action,
  multi-scope tokens for cross-repository mounts), retries with backoff on 5xx, 429 and
  connection resets, one-line errors that name the registry and the credential file but never
  the secret. oras keeps one token for everything and knows no Basic challenge.
- manifests: exact bytes in and out (oras re-serialises JSON, so the digest - and with it every
  signature - would not be the caller's); digest checked on the way in and out; OCI media types
  always in ``Accept`` (distribution 2.8 refuses an OCI index otherwise).
- blobs: streamed, chunked uploads from a seekable file that resume after a broken connection
  (oras reads a whole blob into memory); HEAD-skip; cross-repository mount; downloads streamed
  to a file with their digest verified.
- OCI 1.1 referrers, with the ``sha256-<hex>`` fallback tag when the registry has no API.
- TLS as containers/image: ``--cert-dir`` (or ``/etc/containers/certs.d/HOST``) CAs on top of
  the system trust store, client certificates from ``*.cert``/``*.key``; plain HTTP only for
  loopback registries or ``--tls-verify=false``.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

from nestbuild._image.model import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    digest_of,
)
from nestbuild._registry import auth
from nestbuild._registry.transport import (
    BadURL,
    BodyTooLarge,
    Response,
    Session,
    TLSError,
    TransportError,
)
from nestbuild._util.background import run_all
from nestbuild.errors import NestbuildError

ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_BLOB = b"{}"
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
CERT_DIRS = ("/etc/containers/certs.d", "/etc/docker/certs.d")
READ_SIZE = 1 << 20
#: Bytes per PATCH: small enough that a broken connection costs little, big enough to stream.
CHUNK_SIZE = 64 << 20
#: The largest manifest or index accepted, as containers/image limits it: a registry cannot
#: make nestbuild read (and hold) an arbitrarily large document.
MAX_MANIFEST_SIZE = 4 << 20

Progress = Callable[[int], None]


class RegistryError(NestbuildError):
    """The registry refused or failed a request (after retries)."""


class AuthError(RegistryError):
    """Credentials missing or refused; the message names the registry and where we looked."""


class DigestMismatch(RegistryError):
    """Content that does not hash to the digest it was asked for (corrupt or tampered)."""

    exit_code = 1


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]")
    if name in ("localhost", "::1"):
        return True
    # 127.0.0.0/8, without the ipaddress module (~2 ms of every registry command)
    octets = name.split(".")
    return len(octets) == 4 and octets[0] == "127" and \
        all(o.isdigit() and int(o) < 256 for o in octets)


def _registry_message(resp: Response) -> str:
    """The registry's own error text ({"errors": [{"code", "message"}]}) or the status."""
    text = _error_text(resp.content)
    return f"HTTP {resp.status_code}" + (f" ({text})" if text else "")


#: The longest error body read to keep its connection (a longer one closes it instead).
ERROR_BODY_MAX = 64 << 10
#: How much of a registry's own error text a message quotes.
ERROR_TEXT_MAX = 300
#: A bearer token as it may go into a header: printable ASCII, no space (RFC 6750's b64token
#: is narrower; this is what cannot break the request).
_TOKEN = re.compile(r"[\x21-\x7e]+")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def _json_body(body: bytes) -> Any:
    """A response body as JSON, or None if it is not JSON (or nests past the recursion
    limit, or has a number past the digit limit)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None


def _one_line(text: str, limit: int = ERROR_TEXT_MAX) -> str:
    """Text from the registry, fit for a one-line message on a terminal: control characters
    (escape sequences, line breaks) become spaces, and it is cut at ``limit``."""
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_text(body: bytes) -> str:
    """The ``errors`` of a distribution error body as one line ("CODE: message; ..."), or ""
    when the body is not one."""
    doc = _json_body(body)
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list):
        return ""
    parts = []
    for e in errors:
        if isinstance(e, dict):
            code, message = e.get("code", ""), e.get("message", "")
            parts.append(f"{code if isinstance(code, str) else ''}: "
                         f"{message if isinstance(message, str) else ''}".strip(": "))
    return _one_line("; ".join(p for p in parts if p))


def _range_next(value: str) -> int:
    """Where an upload resumes, from the registry's ``Range: 0-END`` (bytes it holds)."""
    start, _, end = value.partition("-")
    if start == "0" and end.isascii() and end.isdigit() and len(end) < 19 and int(end) > 0:
        return int(end) + 1
    return 0  # "0-0": nothing (or one byte) written, or nonsense: the chunk restarts at 0


def _token_from(body: bytes, host: str) -> str:
    """The bearer token of a token service's answer (``token``, or OAuth2's
    ``access_token``)."""
    doc = _json_body(body)
    token = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise AuthError(f"{host}: token service answered with no token")
    return token


def _tag_list(body: bytes, where: str) -> list[str]:
    """The ``tags`` of a tag-list answer (null for a repository without tags)."""
    doc = _json_body(body)
    tags = doc.get("tags") if isinstance(doc, dict) else "not an object"
    if tags is None:
        return []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise RegistryError(f"{where}: the tag list is not a JSON list of tags")
    return tags


def _index_entries(body: bytes, where: str) -> list[dict[str, Any]]:
    """The ``manifests`` of an image index (a referrers answer or its fallback tag)."""
    doc = _json_body(body)
    entries = doc.get("manifests") if isinstance(doc, dict) else "not an object"
    if entries is None:
        return []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise RegistryError(f"{where}: not an image index")
    return entries


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    i = 0
    while i < len(rest):
        eq = rest.find("=", i)
        if eq == -1:
            break
        key = rest[i:eq].strip(" ,")
        if rest[eq + 1 : eq + 2] == '"':
            end = rest.find('"', eq + 2)
            end = len(rest) if end == -1 else end
            params[key.lower()] = rest[eq + 2 : end]
            i = end + 1
        else:
            end = rest.find(",", eq)
            end = len(rest) if end == -1 else end
            params[key.lower()] = rest[eq + 1 : end].strip()
            i = end + 1
    return scheme.lower(), params


def _scope(repo: str | None, push: bool) -> str:
    return f"repository:{repo}:{'pull,push' if push else 'pull'}" if repo else ""


class BlobSource(Protocol):
    """Bytes to upload that may still be growing (a layer compressed while it is uploaded).

    ``wait(end)`` blocks until ``end`` bytes exist or the source is complete and returns how
    many exist (it raises the producer's error, if any); ``read_at`` reads what exists;
    ``result()`` is (digest, size) once complete. The bytes stay readable until the upload
    ends, so a broken chunk is sent again from where the registry stands.
    """

    def wait(self, end: int) -> int: ...

    def read_at(self, offset: int, size: int) -> bytes: ...

    def result(self) -> tuple[str, int]: ...


class _FileSource:
    """A seekable file of known digest and size as a :class:`BlobSource`."""

    def __init__(self, f: IO[bytes], digest: str, size: int) -> None:
        self.f, self.digest, self.size = f, digest, size

    def wait(self, end: int) -> int:
        return self.size

    def read_at(self, offset: int, size: int) -> bytes:
        self.f.seek(offset)
        return self.f.read(size)

    def result(self) -> tuple[str, int]:
        return self.digest, self.size


class _Chunk:
    """A window of a blob source as a request body, reporting bytes as they are sent."""

    def __init__(self, src: BlobSource, offset: int, size: int,
                 progress: Progress | None) -> None:
        self.src, self.offset, self.size, self.progress = src, offset, size, progress

    def __len__(self) -> int:  # sent with Content-Length: registries refuse chunked PATCH
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        offset, left = self.offset, self.size
        while left:
            data = self.src.read_at(offset, min(READ_SIZE, left))
            if not data:
                raise RegistryError("the blob file shrank while it was being uploaded")
            left -= len(data)
            offset += len(data)
            if self.progress:
                self.progress(len(data))
            yield data


class RegistryClient:
    """One registry host. Thread-safe: blobs are uploaded from several threads at once."""

    def __init__(
        self,
        host: str,
        *,
        authfile: Path | None = None,
        cert_dir: Path | None = None,
        tls_verify: bool = True,
        insecure_http: bool | None = None,
        retries: int = 5,
        backoff: float = 0.5,
        timeout: float = 60.0,
        chunk_size: int = CHUNK_SIZE,
        credentials: auth.Credentials | None = None,
    ) -> None:
        self.host = host
        self.authfile = authfile
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.chunk_size = chunk_size
        self._tls_verify_flag = tls_verify
        self._insecure_http = insecure_http
        self._scheme: str | None = "http" if insecure_http else None
        self._lock = threading.Lock()
        self._tokens: dict[str, str] = {}
        self._basic = False
        self._lookup: auth.Lookup | None = (
            auth.Lookup(credentials, ("the login command",)) if credentials else None)
        self._referrers_api: bool | None = None
        self.bytes_uploaded = 0
        self.bytes_downloaded = 0
        #: Upload sessions prepare_blobs opened, by (repo, digest).
        self._sessions: dict[tuple[str, str], str] = {}
        self._cas, self._client_cert = self._cert_dir(cert_dir)
        self._http = Session(timeout=timeout, tls=self._tls_context, loopback=is_loopback)

    def __str__(self) -> str:
        return f"registry {self.host}"

    def close(self) -> None:
        self.cancel_uploads()
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- TLS ----------------------------------------------------------------------------------

    def _cert_dir(self, cert_dir: Path | None) -> tuple[list[Path], tuple[Path, Path] | None]:
        """The extra CAs and the client certificate containers/image would use for this host."""
        dirs = [cert_dir] if cert_dir is not None else [Path(d) / self.host for d in CERT_DIRS]
        if cert_dir is not None and not cert_dir.is_dir():
            raise RegistryError(f"--cert-dir {cert_dir}: no such directory")
        cas: list[Path] = []
        client_cert: tuple[Path, Path] | None = None
        for d in dirs:
            if not d.is_dir():
                continue
            cas += sorted(d.glob("*.crt"))
            for cert in sorted(d.glob("*.cert")):
                key = cert.with_suffix(".key")
                if not key.is_file():
                    raise RegistryError(f"{cert}: client certificate without {key.name}")
                client_cert = (cert, key)
        return cas, client_cert

    def _tls_context(self) -> ssl.SSLContext:
        """The system trust store plus the cert dir's CAs, as containers/image builds it."""
        if self._tls_verify_flag:
            ctx = ssl.create_default_context()
            try:
                for ca in self._cas:
                    ctx.load_verify_locations(cafile=str(ca))
            except (OSError, ssl.SSLError) as exc:
                raise RegistryError(f"{self.host}: cannot load the CA certificates "
                                    f"{', '.join(map(str, self._cas))} ({exc})") from None
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self._client_cert:
            cert, key = self._client_cert
            try:
                ctx.load_cert_chain(str(cert), str(key))
            except (OSError, ssl.SSLError) as exc:
                raise RegistryError(f"{cert}: unusable client certificate ({exc})") from None
        return ctx

    # -- requests -------------------------------------------------------------------------------

    def credentials(self) -> auth.Lookup:
        if self._lookup is None:
            self._lookup = auth.lookup(self.host, authfile=self.authfile)
        return self._lookup

    def _base(self) -> str:
        if self._scheme is None:
            self._scheme = self._probe()
        return f"{self._scheme}://{self.host}"

    def _probe(self) -> str:
        """https, or http for a loopback registry (or --tls-verify=false) that speaks no TLS.

        A loopback host is asked over plain HTTP first (no credentials are sent with the
        probe): a TLS registry answers 400, and the common plain local registry saves a TLS
        handshake attempt and the CA bundle load (~30 ms of every short command).
        """
        if self._insecure_http is None and is_loopback(self.host):
            with contextlib.suppress(TransportError):
                resp = self._http.request("GET", f"http://{self.host}/v2/")
                if resp.status_code in (200, 401) and \
                        resp.headers.get("Docker-Distribution-Api-Version"):
                    self._note_ping(resp)
                    return "http"
        try:
            self._note_ping(self._http.request("GET", f"https://{self.host}/v2/"))
            return "https"
        except TLSError as exc:
            if not exc.untrusted and (is_loopback(self.host) or not self._tls_verify_flag):
                with contextlib.suppress(TransportError):
                    self._note_ping(self._http.request("GET", f"http://{self.host}/v2/"))
                    return "http"
            if exc.untrusted:
                raise RegistryError(
                    f"{self.host}: TLS certificate not trusted ({exc}); pass --cert-dir DIR "
                    "with its CA (ca.crt), or --tls-verify=false for a registry you trust"
                ) from None
            raise RegistryError(f"{self.host}: TLS handshake failed ({exc})") from None
        except TransportError as exc:
            raise RegistryError(f"{self.host}: cannot connect ({exc})") from None

    def _note_ping(self, resp: Response) -> None:
        challenge = resp.headers.get("WWW-Authenticate", "")
        if resp.status_code == 401 and challenge.lower().startswith("basic"):
            self._basic = self.credentials().credentials is not None

    def _authorize(self, headers: dict[str, str], scope: str) -> None:
        if self._basic:
            creds = self.credentials().credentials
            if creds is not None:
                headers["Authorization"] = _basic(creds)
            return
        with self._lock:
            token = self._tokens.get(scope)
            if token is None and scope.endswith(":pull"):
                token = self._tokens.get(scope + ",push")
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"

    def _who(self) -> str:
        lookup = self.credentials()
        if lookup.credentials is None:
            return f"anonymously (no credentials for {self.host}; {lookup.describe()})"
        c = lookup.credentials
        return f"as {c.username} (credentials from {c.source})"

    def _challenge(self, resp: Response, scope: str, extra: tuple[str, ...]) -> None:
        scheme, params = _parse_challenge(resp.headers.get("WWW-Authenticate", ""))
        lookup = self.credentials()
        creds = lookup.credentials
        if scheme == "basic":
            if creds is None:
                raise AuthError(f"{self.host}: authentication required and no credentials "
                                f"({lookup.describe()}); run `nestbuild login {self.host}`")
            if self._basic:
                raise AuthError(f"{self.host}: credentials for {creds.username} from "
                                f"{creds.source} were refused (HTTP 401)")
            self._basic = True
            return
        if scheme != "bearer" or "realm" not in params:
            raise AuthError(f"{self.host}: unsupported authentication challenge "
                            f"{_one_line(scheme, 40)!r}")
        scopes = {s for s in params.get("scope", "").split(" ") if s}
        scopes |= {s for s in (scope, *extra) if s}
        query: list[tuple[str, str]] = [("service", params["service"])] \
            if "service" in params else []
        query += [("scope", s) for s in sorted(scopes)]
        headers: dict[str, str] = {}
        if creds is not None:
            query.append(("account", creds.username))
            headers["Authorization"] = _basic(creds)
        realm = params["realm"]
        if urllib.parse.urlsplit(realm).scheme not in ("http", "https"):
            raise AuthError(f"{self.host}: the token service {_one_line(realm, 100)!r} is not "
                            "an HTTP URL")
        url = f"{realm}{'&' if '?' in realm else '?'}{urllib.parse.urlencode(query)}"
        try:
            tr = self._http.request("GET", url, headers=headers)
        except TransportError as exc:
            raise AuthError(f"{self.host}: token service {realm} unreachable ({exc})") from None
        if tr.status_code in (401, 403):
            raise AuthError(f"{self.host}: token service refused the request {self._who()} "
                            f"(HTTP {tr.status_code})")
        if tr.status_code != 200:
            raise AuthError(f"{self.host}: token service answered HTTP {tr.status_code}")
        token = _token_from(tr.content, self.host)
        with self._lock:
            self._tokens[scope] = token

    def do_request(
        self,
        url: str,
        method: str = "GET",
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        *,
        repo: str | None = None,
        push: bool = False,
        extra_scopes: tuple[str, ...] = (),
        retry: bool = True,
    ) -> Response:
        """One request with auth and retries. ``url`` may be a path (``/v2/...``).

        Retried: connection errors, 429 and 5xx, with exponential backoff (``Retry-After``
        honoured). A body that is a stream is not retried here: the caller resumes it.
        """
        if url.startswith("/"):
            url = self._base() + url
        scope = _scope(repo, push)
        replayable = data is None or isinstance(data, bytes | str)
        authed = False
        attempt = 0
        while True:
            hdrs = dict(headers or {})
            self._authorize(hdrs, scope)
            try:
                resp = self._http.request(method, url, body=data, headers=hdrs, stream=stream)
            except TransportError as exc:
                if not (retry and replayable) or attempt >= self.retries or \
                        isinstance(exc, BadURL):
                    raise RegistryError(f"{self.host}: {method} {_path(url)} failed "
                                        f"({exc})") from None
                attempt += 1
                time.sleep(self._delay(attempt, None))
                continue
            if resp.status_code == 401 and not authed:
                authed = True
                resp.close()
                self._challenge(resp, scope, extra_scopes)
                continue
            if resp.status_code == 401:
                resp.close()
                raise AuthError(f"{self.host}: {method} {_path(url)} unauthorized {self._who()}")
            if resp.status_code == 403:
                resp.close()
                raise AuthError(f"{self.host}: access to {repo or _path(url)} denied "
                                f"{self._who()} (HTTP 403)")
            if resp.status_code in RETRY_STATUS and retry and replayable \
                    and attempt < self.retries:
                attempt += 1
                resp.close()
                time.sleep(self._delay(attempt, resp.headers.get("Retry-After")))
                continue
            return resp

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after and retry_after.isascii() and retry_after.isdigit():  # not "²"
            return min(float(retry_after), 30.0)
        return float(min(self.backoff * 2 ** (attempt - 1), 8.0))

    def _fail(self, resp: Response, what: str) -> RegistryError:
        return RegistryError(f"{self.host}: {what}: {_registry_message(resp)}")

    def check_login(self) -> None:
        """Authenticate against ``/v2/`` (what ``login`` does before it stores anything)."""
        resp = self.do_request("/v2/")
        if resp.status_code != 200:
            raise self._fail(resp, "checking the credentials")

    # -- manifests ----------------------------------------------------------------------------

    def get_manifest(self, repo: str, ref: str) -> tuple[bytes, str] | None:
        """The manifest's exact bytes and media type, or None if there is none under ``ref``."""
        resp = self.do_request(f"/v2/{repo}/manifests/{ref}", headers={"Accept": ACCEPT},
                               repo=repo, stream=True)
        if resp.status_code == 404:
            # Read the short error body rather than close: the connection (and its TLS session)
            # then carries the next request. Signing reads an absent .sig tag twice, then
            # stores it; each close cost a new connection.
            with contextlib.suppress(TransportError):
                resp.read_limited(ERROR_BODY_MAX)
            return None
        if resp.status_code != 200:
            raise self._fail(resp, f"reading manifest {repo}:{ref}")
        try:
            data = resp.read_limited(MAX_MANIFEST_SIZE)
        except BodyTooLarge as exc:
            raise RegistryError(f"{self.host}/{repo}:{ref}: the manifest is larger than "
                                f"{MAX_MANIFEST_SIZE >> 20} MiB ({exc}); refused") from None
        except TransportError as exc:
            raise RegistryError(f"{self.host}: reading manifest {repo}:{ref} failed "
                                f"({exc})") from None
        if ref.startswith("sha256:") and digest_of(data) != ref:
            raise DigestMismatch(f"{self.host}/{repo}@{ref}: the manifest served does not match "
                                 f"its digest (got {digest_of(data)})")
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        if media_type in ("", "application/json", "text/plain"):
            doc = _json_body(data)
            found = doc.get("mediaType") if isinstance(doc, dict) else None
            media_type = found if isinstance(found, str) and found else media_type
        return data, media_type

    def resolve(self, repo: str, ref: str) -> str | None:
        """The digest ``ref`` points at (a HEAD, no body), or None."""
        resp = self.do_request(f"/v2/{repo}/manifests/{ref}", "HEAD",
                               headers={"Accept": ACCEPT}, repo=repo)
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise self._fail(resp, f"resolving {repo}:{ref}")
        digest = resp.headers.get("Docker-Content-Digest")
        if digest and _DIGEST.fullmatch(digest):
            return digest
        got = self.get_manifest(repo, ref)  # none, or one that is not a digest: hash it
        return digest_of(got[0]) if got else None

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        """Store exactly ``data`` under ``ref`` (tag or digest); its digest."""
        digest = digest_of(data)
        resp = self.do_request(f"/v2/{repo}/manifests/{ref}", "PUT", data=data,
                               headers={"Content-Type": media_type}, repo=repo, push=True)
        if resp.status_code not in (200, 201):
            raise self._fail(resp, f"storing manifest {repo}:{ref}")
        stored = resp.headers.get("Docker-Content-Digest")
        if stored and stored != digest:
            raise DigestMismatch(f"{self.host}/{repo}:{ref}: the registry stored the manifest "
                                 f"as {stored}, not {digest}")
        if self._referrers_api is None and resp.headers.get("OCI-Subject"):
            self._referrers_api = True
        return digest

    def tags(self, repo: str) -> list[str]:
        out: list[str] = []
        url: str | None = f"/v2/{repo}/tags/list?n=1000"
        while url:
            resp = self.do_request(url, repo=repo)
            if resp.status_code == 404:
                return out
            if resp.status_code != 200:
                raise self._fail(resp, f"listing tags of {repo}")
            out += _tag_list(resp.content, f"{self.host}/{repo}")
            link = resp.links.get("next", {}).get("url")
            url = urllib.parse.urljoin(resp.url, link) if link else None
        return out

    # -- blobs --------------------------------------------------------------------------------

    def has_blob(self, repo: str, digest: str) -> bool:
        if (repo, digest) in self._sessions:
            return False  # prepared: storing it again is cheaper than asking
        resp = self.do_request(f"/v2/{repo}/blobs/{digest}", "HEAD", repo=repo)
        if resp.status_code in (200, 307):
            return True
        if resp.status_code == 404:
            return False
        raise self._fail(resp, f"checking blob {digest[:19]} in {repo}")

    def prepare_blobs(self, repo: str, digests: Sequence[str]) -> None:
        """Open an upload session for each of these (small) blobs, so that storing one later
        is a single request, and :meth:`has_blob` does not ask: sending a few hundred bytes
        the registry may already have costs less than a round trip to find out. Nothing is
        stored; :meth:`cancel_uploads` (or :meth:`close`) ends the sessions nobody used.
        Signing does this while its key decrypts."""
        todo = [d for d in dict.fromkeys(digests) if (repo, d) not in self._sessions]

        def start(digest: str) -> None:
            location = self._start_upload(repo)
            with self._lock:
                self._sessions[(repo, digest)] = location

        # side by side: each thread opens (or reuses) a connection of its own, and leaves it
        # idle for the blobs' PUTs, which then go side by side without a handshake
        run_all(functools.partial(start, digest) for digest in todo)

    def cancel_uploads(self) -> None:
        """End the upload sessions :meth:`prepare_blobs` opened and nothing used."""
        with self._lock:
            sessions = list(self._sessions.items())
            self._sessions.clear()
        for (repo, _), location in sessions:
            with contextlib.suppress(RegistryError):
                self.do_request(location, "DELETE", repo=repo, push=True, retry=False)

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Cross-repository mount: True if the registry linked the blob without an upload."""
        resp = self.do_request(
            f"/v2/{repo}/blobs/uploads/?mount={digest}&from={urllib.parse.quote(from_repo)}",
            "POST", repo=repo, push=True, extra_scopes=(_scope(from_repo, False),))
        if resp.status_code == 201:
            return True
        if resp.status_code == 202:  # an upload was started instead: cancel it
            with contextlib.suppress(RegistryError):
                self.do_request(self._location(resp), "DELETE", repo=repo, push=True,
                                retry=False)
            return False
        raise self._fail(resp, f"mounting {digest[:19]} from {from_repo}")

    def _location(self, resp: Response) -> str:
        loc = resp.headers.get("Location")
        if not loc:
            raise RegistryError(f"{self.host}: upload started without a Location header")
        return urllib.parse.urljoin(self._base() + "/", loc)

    def _start_upload(self, repo: str) -> str:
        resp = self.do_request(f"/v2/{repo}/blobs/uploads/", "POST", repo=repo, push=True)
        if resp.status_code != 202:
            raise self._fail(resp, f"starting an upload to {repo}")
        return self._location(resp)

    @staticmethod
    def _with_digest(location: str, digest: str) -> str:
        return f"{location}{'&' if '?' in location else '?'}digest={digest}"

    def put_blob(self, repo: str, data: bytes | BinaryIO, digest: str, size: int,
                 progress: Progress | None = None) -> None:
        """Upload one blob: bytes in one request, a (seekable) file in resumable chunks."""
        if isinstance(data, bytes):
            if len(data) != size or digest_of(data) != digest:
                raise DigestMismatch(f"blob {digest[:19]}: the data does not match its digest")
            with self._lock:
                location = self._sessions.pop((repo, digest), None)
            location = location or self._start_upload(repo)
            resp = self.do_request(self._with_digest(location, digest), "PUT", data=data,
                                   headers={"Content-Type": "application/octet-stream"},
                                   repo=repo, push=True)
            if resp.status_code != 201:
                raise self._fail(resp, f"uploading blob {digest[:19]} to {repo}")
            if progress:
                progress(size)
            self._count(size)
            return
        self._put_stream(repo, data, digest, size, progress)

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes_uploaded += n

    def _put_stream(self, repo: str, f: BinaryIO, digest: str, size: int,
                    progress: Progress | None) -> None:
        self.put_source(repo, _FileSource(f, digest, size), progress, name=f"blob {digest[:19]}")

    def put_source(self, repo: str, src: BlobSource, progress: Progress | None = None,
                   *, chunk_size: int | None = None, name: str = "a blob") -> tuple[str, int]:
        """Upload a blob in resumable chunks as its bytes appear; (digest, size).

        Each chunk is sent once ``chunk_size`` bytes past it exist (or the source is complete),
        so a blob being compressed goes up while it is made. The blob is committed (the final
        PUT with its digest) only when the source completes without error: a producer that
        fails (a layer that does not match its diff ID) leaves nothing in the registry, and the
        upload session is cancelled.
        """
        chunk = chunk_size or self.chunk_size
        location = self._start_upload(repo)
        try:
            offset = 0
            failures = 0
            while True:
                avail = src.wait(offset + chunk)
                if avail <= offset:
                    break
                n = min(chunk, avail - offset)
                body = _Chunk(src, offset, n, progress)
                headers = {"Content-Type": "application/octet-stream",
                           "Content-Range": f"{offset}-{offset + n - 1}"}
                try:
                    resp = self.do_request(location, "PATCH", data=body, headers=headers,
                                           repo=repo, push=True)
                except RegistryError as exc:
                    if isinstance(exc, AuthError):
                        raise
                    resp = None
                    reason = exc.message
                if resp is not None and resp.status_code == 202:
                    location = self._location(resp)
                    offset += n
                    self._count(n)
                    continue
                if resp is not None:
                    reason = _registry_message(resp)
                    if resp.status_code not in RETRY_STATUS and resp.status_code != 416:
                        raise self._fail(resp, f"uploading {name} to {repo}")
                failures += 1
                if failures > self.retries:
                    raise RegistryError(f"{self.host}: uploading {name} to {repo} "
                                        f"failed {failures} times (last: {reason})")
                time.sleep(self._delay(failures, None))
                location, offset = self._resume(repo, location)
            digest, size = src.result()
            if offset != size:
                raise RegistryError(f"{self.host}: blob {digest[:19]}: sent {offset} bytes of "
                                    f"{size}")
            resp = self.do_request(self._with_digest(location, digest), "PUT",
                                   headers={"Content-Length": "0"}, repo=repo, push=True)
            if resp.status_code != 201:
                raise self._fail(resp, f"finishing blob {digest[:19]} in {repo}")
            return digest, size
        except BaseException:
            with contextlib.suppress(RegistryError):
                self.do_request(location, "DELETE", repo=repo, push=True, retry=False)
            raise

    def _resume(self, repo: str, location: str) -> tuple[str, int]:
        """Where a broken upload stands: (location, bytes the registry has); or a new upload."""
        with contextlib.suppress(RegistryError):
            resp = self.do_request(location, repo=repo, push=True)
            if resp.status_code == 204:
                loc = self._location(resp) if resp.headers.get("Location") else location
                return loc, _range_next(resp.headers.get("Range", ""))
        return self._start_upload(repo), 0

    def get_blob(self, repo: str, digest: str) -> bytes:
        """A small blob (config, signature), digest-checked."""
        resp = self.do_request(f"/v2/{repo}/blobs/{digest}", repo=repo)
        if resp.status_code != 200:
            raise self._fail(resp, f"reading blob {digest[:19]} from {repo}")
        data = resp.content
        if digest_of(data) != digest:
            raise DigestMismatch(f"{self.host}/{repo}: blob {digest[:19]} is corrupt "
                                 f"(it hashes to {digest_of(data)[:19]})")
        return data

    def download_blob(self, repo: str, digest: str, out: IO[bytes],
                      size: int | None = None, progress: Progress | None = None) -> int:
        """Stream a blob into ``out`` (from its current position), verifying the digest.

        A broken download restarts (the file is rewound); a blob whose bytes do not match its
        digest raises :class:`DigestMismatch` and the caller discards ``out``. With ``size``,
        nothing past it is read: a registry cannot fill the disk with an endless blob.
        """
        start = out.tell()
        for attempt in range(self.retries + 1):
            out.seek(start)
            out.truncate()
            h = hashlib.sha256()
            total = 0
            try:
                resp = self.do_request(f"/v2/{repo}/blobs/{digest}", repo=repo, stream=True)
                if resp.status_code != 200:
                    raise self._fail(resp, f"downloading blob {digest[:19]} from {repo}")
                with contextlib.closing(resp):
                    for chunk in resp.iter_content(READ_SIZE):
                        if size is not None and total + len(chunk) > size:
                            total += len(chunk)
                            break
                        h.update(chunk)
                        out.write(chunk)
                        total += len(chunk)
                        if progress:
                            progress(len(chunk))
            except TransportError as exc:
                if attempt >= self.retries:
                    raise RegistryError(f"{self.host}: downloading {digest[:19]} failed "
                                        f"({exc})") from None
                time.sleep(self._delay(attempt + 1, None))
                continue
            got = "sha256:" + h.hexdigest()
            if got != digest or (size is not None and total != size):
                out.seek(start)
                out.truncate()
                if size is not None and total > size:
                    raise DigestMismatch(f"{self.host}/{repo}: blob {digest[:19]} is longer than "
                                         f"the {size} bytes its descriptor says; refused")
                raise DigestMismatch(f"{self.host}/{repo}: blob {digest[:19]} is corrupt "
                                     f"(received {total} bytes hashing to {got[:19]})")
            with self._lock:
                self.bytes_downloaded += total
            return total
        raise AssertionError("unreachable")

    # -- referrers ----------------------------------------------------------------------------

    def referrers(self, repo: str, digest: str) -> list[dict[str, Any]]:
        """OCI 1.1 referrers of ``digest``: the API, else the ``sha256-<hex>`` fallback tag."""
        if self._referrers_api is not False:
            resp = self.do_request(f"/v2/{repo}/referrers/{digest}",
                                   headers={"Accept": OCI_INDEX}, repo=repo)
            ctype = resp.headers.get("Content-Type", "")
            if resp.status_code == 200 and ctype.startswith(OCI_INDEX):
                self._referrers_api = True
                return _index_entries(resp.content, f"{self.host}/{repo}: referrers of "
                                      f"{digest[:19]}")
            self._referrers_api = False
        tag = fallback_tag(digest)
        got = self.get_manifest(repo, tag)
        if got is None:
            return []
        return _index_entries(got[0], f"{self.host}/{repo}:{tag}")

    def add_referrer(self, repo: str, subject_digest: str, descriptor: Mapping[str, Any]) -> None:
        """Record a pushed manifest that has a ``subject`` where clients will look for it.

        With the referrers API the registry does it; otherwise the fallback tag's index is
        read, extended and written back (a client-maintained list, as the spec prescribes).
        """
        if self._referrers_api is None:
            self.referrers(repo, subject_digest)
        if self._referrers_api:
            return
        tag = fallback_tag(subject_digest)
        got = self.get_manifest(repo, tag)
        index: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX}
        entries: list[dict[str, Any]] = []
        if got:  # checked, not trusted: an index that is not one is refused, not overwritten
            entries = _index_entries(got[0], f"{self.host}/{repo}:{tag}")
            index = json.loads(got[0])  # an object: _index_entries read it
        index["manifests"] = entries
        if any(m.get("digest") == descriptor["digest"] for m in index["manifests"]):
            return
        index["manifests"].append(dict(descriptor))
        self.put_manifest(repo, tag, json.dumps(index, separators=(",", ":")).encode(),
                          OCI_INDEX)


def fallback_tag(digest: str) -> str:
    """The referrers tag schema: ``sha256:abc`` -> ``sha256-abc``."""
    return digest.replace(":", "-", 1)


def _basic(creds: auth.Credentials) -> str:
    return "Basic " + base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()


def _path(url: str) -> str:
    return urllib.parse.urlsplit(url).path
