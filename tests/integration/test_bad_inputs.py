"""The catalogue of bad inputs and faults, through the real ``nestbuild`` executable.

Each case is one thing a user, a registry, an image or a key file can get wrong, and asserts
what a user relies on when it happens: the exit code, one line on stderr that says why (never
a traceback), and that nothing was lost or written outside its place (the layout, the registry,
the keys, the auth file and the sysroot are as they were; no partial output file is left).
docs/security.md lists every case with the guarantees they prove.

The registries are real (Debian's docker-registry, plain, TLS with htpasswd, token auth, behind
the fault-injecting proxy); the few lies no real registry tells (a manifest of 5 MiB, a blob
redirected to another host) come from a small HTTP server written here, which is what a
malicious registry is.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nestbuild._image import open_image
from nestbuild._image.layout import LayoutWriter
from nestbuild._image.model import OCI_MANIFEST, Descriptor, digest_of
from nestbuild._registry.client import RegistryClient
from nestbuild._tools import buildah
from nestbuild.node import deploy
from nestbuild.shipping.upload import upload as push
from nestbuild.signing import keys
from tests.fixtures import cli
from tests.fixtures.registry import FaultProxy, Registry
from tests.ocibuilder import BOOTABLE, Layer, bootable_base, write_platform_index

#: The components this file runs itself (tests/conftest.py adds the fixtures' ones).
pytestmark = [pytest.mark.registry, pytest.mark.buildah, pytest.mark.ostree]

NESTBUILD = Path(sys.executable).with_name("nestbuild")
PASSPHRASE = "catalogue-passphrase"
IDENTITY = "registry.example.com/nodes/web:v1"
#: Variables that would let the host's own settings leak into a case.
SCRUBBED = ("NESTBUILD_PASSWORD", "COSIGN_PASSWORD", "NESTBUILD_REGISTRY_PASSWORD",
            "REGISTRY_AUTH_FILE", "DOCKER_CONFIG", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
            "http_proxy", "https_proxy", "no_proxy", "PYTHONUNBUFFERED")


# -- running the executable -------------------------------------------------------------------


def environment(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with HOME and XDG_RUNTIME_DIR under the test's directory and
    no passphrase, password or proxy variables: nothing of this machine's is found."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    (home / "run").mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(home / "run"),
               XDG_CONFIG_HOME=str(home / ".config"), COLUMNS="200")
    return {**env, **(extra or {})}


def nestbuild(*args: str, env: dict[str, str] | None = None, stdin: str = "",
              cwd: Path | None = None, home: Path) -> subprocess.CompletedProcess[str]:
    """The CLI, in an :func:`environment` of its own."""
    return cli.nestbuild(*args, env=environment(home, env), input=stdin, cwd=cwd)


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    """The single non-empty line on stderr (the cause), after checking that is all there is."""
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def tree(path: Path) -> dict[str, tuple[int, str]] | None:
    """Everything at ``path`` (not following symlinks): mode and content hash or link target,
    by relative path; None when nothing is there. Equal trees are byte-identical."""
    if not path.exists() and not path.is_symlink():
        return None
    out: dict[str, tuple[int, str]] = {}

    def note(p: Path) -> None:
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            what = "-> " + os.readlink(p)
        elif stat.S_ISREG(st.st_mode):
            what = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            what = ""
        out[str(p.relative_to(path))] = (st.st_mode, what)

    note(path)
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirnames, filenames in os.walk(path):
            for name in (*dirnames, *filenames):
                note(Path(dirpath) / name)
    return out


@dataclass
class Run:
    """One case: the command line and what must hold after it."""

    argv: list[str]
    code: int
    #: Substrings of the one line on stderr.
    says: tuple[str, ...]
    #: Files or trees that must be byte-identical afterwards (None: must stay absent).
    keep: tuple[Path, ...] = ()
    #: Other state that must read the same before and after (a registry's tags and blobs).
    state: tuple[Callable[[], object], ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    stdin: str = ""
    cwd: Path | None = None
    #: Strings that must appear nowhere in the output (passwords, passphrases).
    secrets: tuple[str, ...] = ()
    #: How the line starts ("error: " for every error; a few refusals are not errors).
    prefix: str = "error: "


class Ctx:
    """What a case builds its input from: its own directory and, on demand, the registries."""

    def __init__(self, request: pytest.FixtureRequest, tmp: Path) -> None:
        self.request, self.tmp = request, tmp

    def fixture(self, name: str) -> Any:
        return self.request.getfixturevalue(name)

    @property
    def registry(self) -> Registry:
        reg: Registry = self.fixture("registry")
        return reg

    @property
    def tls(self) -> Registry:
        reg: Registry = self.fixture("tls_registry")
        return reg

    def path(self, name: str) -> Path:
        return self.tmp / name

    def write(self, name: str, data: str | bytes, mode: int | None = None) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        if mode is not None:
            path.chmod(mode)
        return path

    def layout(self, name: str = "l", tag: str = "v1", **kw: Any) -> Path:
        root = self.tmp / name
        image_layout(root, tag, **kw)
        return root

    def keypair(self) -> tuple[Path, Path]:
        (self.tmp / "keys").mkdir(exist_ok=True)
        return keys.write_key_pair(self.tmp / "keys" / "cosign", PASSPHRASE.encode())


CASES: dict[str, Callable[[Ctx], Run]] = {}


def case(fn: Callable[[Ctx], Run]) -> Callable[[Ctx], Run]:
    """Register a case under its function name (``case_oci_index_not_json`` is
    ``oci-index-not-json``), the id pytest and docs/security.md know it by."""
    CASES[fn.__name__.removeprefix("case_").replace("_", "-")] = fn
    return fn


# -- images -------------------------------------------------------------------------------------


def image_layout(root: Path, tag: str = "v1", *, extra: Layer | None = None,
                 architecture: str = "amd64", labels: dict[str, str] | None = None) -> Descriptor:
    """A small bootable image (what bootc's lints expect of a base, plus os-release) tagged
    ``tag`` in the OCI layout at ``root``."""
    layer = bootable_base(extra).file("/usr/lib/os-release", b"ID=catalogue\nVERSION_ID=1\n")
    raw = layer.tar()
    w = LayoutWriter(root)
    desc = w.add_bytes(raw, "application/vnd.oci.image.layer.v1.tar")
    return w.add_image([desc], [digest_of(raw)], labels=BOOTABLE if labels is None else labels,
                       tag=tag, architecture=architecture)


def blob(root: Path, digest: str) -> Path:
    return root / "blobs" / "sha256" / digest.split(":", 1)[1]


def manifest_of(root: Path, tag: str = "v1") -> tuple[str, dict[str, Any]]:
    index = json.loads((root / "index.json").read_text())
    digest = next(m["digest"] for m in index["manifests"]
                  if m["annotations"]["org.opencontainers.image.ref.name"] == tag)
    return digest, json.loads(blob(root, digest).read_bytes())


def repo() -> str:
    return f"catalogue/{uuid.uuid4().hex[:10]}"


def registry_state(reg: Registry, name: str, *, authfile: Path | None = None
                   ) -> Callable[[], object]:
    """The repository's tags and every blob the registry stores: equal before and after a
    refused push means nothing was tagged and nothing uploaded."""
    def read() -> object:
        with RegistryClient(reg.host, authfile=authfile,
                            cert_dir=reg.cert_dir if reg.tls else None) as c:
            return sorted(c.tags(name)), reg.stored_blobs()
    return read


class LyingRegistry(http.server.ThreadingHTTPServer):
    """A registry that says what a test tells it to: ``routes`` maps a path to (status,
    headers, body); ``/v2/`` answers as distribution does. ``seen`` keeps every request's path
    and headers."""

    daemon_threads = True

    def __init__(self) -> None:
        #: An ``Authorization`` value every /v2/ request must carry (Basic auth), if set.
        self.basic: str | None = None
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {
            "/v2/": (200, {"Docker-Distribution-Api-Version": "registry/2.0"}, b"{}")}
        self.seen: list[tuple[str, dict[str, str]]] = []
        super().__init__(("127.0.0.1", 0), _LyingHandler)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _LyingHandler(http.server.BaseHTTPRequestHandler):
    server: LyingRegistry
    protocol_version = "HTTP/1.1"

    def _answer(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        self.server.seen.append((path, dict(self.headers)))
        if self.server.basic and path.startswith("/v2/") and \
                self.headers.get("Authorization") != self.server.basic:
            status, headers, data = 401, {"WWW-Authenticate": 'Basic realm="liar"'}, b""
        else:
            status, headers, data = self.server.routes.get(
                path, (404, {"Content-Type": "application/json"},
                       b'{"errors": [{"code": "MANIFEST_UNKNOWN", "message": "unknown"}]}'))
        self.send_response(status)
        for name, value in {"Content-Length": str(len(data)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer(True)

    def do_HEAD(self) -> None:
        self._answer(False)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def lying_registry() -> Iterator[LyingRegistry]:
    server = LyingRegistry()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def serve_image(liar: LyingRegistry, image: Path, name: str = "nodes/web"
                ) -> tuple[str, dict[str, Any]]:
    """Serve the layout image tagged v1 at ``image`` as NAME:v1 (and by digest), every blob
    as stored; (manifest digest, manifest)."""
    digest, manifest = manifest_of(image)
    data = blob(image, digest).read_bytes()
    for ref in (digest, "v1"):
        liar.routes[f"/v2/{name}/manifests/{ref}"] = (
            200, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": digest}, data)
    for desc in (manifest["config"], *manifest["layers"]):
        liar.routes[f"/v2/{name}/blobs/{desc['digest']}"] = (
            200, {}, blob(image, desc["digest"]).read_bytes())
    return digest, manifest


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- OCI layouts and archives -------------------------------------------------------------------


@case
def case_oci_no_such_directory(ctx: Ctx) -> Run:
    return Run(["validate", f"oci:{ctx.path('none')}", "-q"], 2, ("no such directory",),
               keep=(ctx.path("none"),))


@case
def case_oci_index_missing(ctx: Ctx) -> Run:
    root = ctx.layout()
    (root / "index.json").unlink()
    return Run(["validate", f"oci:{root}:v1", "-q"], 2, ("not an OCI layout (no index.json)",),
               keep=(root,))


@case
def case_oci_index_not_json(ctx: Ctx) -> Run:
    root = ctx.layout()
    (root / "index.json").write_text('{"manifests": [')
    return Run(["validate", f"oci:{root}:v1", "-q"], 2, ("index.json: not valid JSON",),
               keep=(root,))


@case
def case_oci_index_not_an_object(ctx: Ctx) -> Run:
    root = ctx.layout()
    (root / "index.json").write_text("[]")
    return Run(["validate", f"oci:{root}:v1", "-q"], 2, ("index.json: not a JSON object",),
               keep=(root,))


@case
def case_oci_index_bad_digest(ctx: Ctx) -> Run:
    root = ctx.layout()
    index = json.loads((root / "index.json").read_text())
    index["manifests"][0]["digest"] = "sha512:" + "0" * 128
    (root / "index.json").write_text(json.dumps(index))
    return Run(["validate", f"oci:{root}:v1", "-q"], 2, ("unsupported digest 'sha512:",),
               keep=(root,))


@case
def case_oci_manifest_missing(ctx: Ctx) -> Run:
    root = ctx.layout()
    digest, _ = manifest_of(root)
    blob(root, digest).unlink()
    return Run(["inspect", f"oci:{root}:v1"], 2, (f"manifest {digest} is missing",),
               keep=(root,))


@case
def case_oci_manifest_corrupt(ctx: Ctx) -> Run:
    root = ctx.layout()
    digest, _ = manifest_of(root)
    path = blob(root, digest)
    path.write_bytes(path.read_bytes().replace(b'"schemaVersion"', b'"schemaVersion" '))
    return Run(["validate", f"oci:{root}:v1", "-q"], 2, (f"manifest {digest} is corrupt",),
               keep=(root,))


@case
def case_oci_manifest_unsupported_type(ctx: Ctx) -> Run:
    root = ctx.layout()
    w = LayoutWriter(root)
    schema1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
    desc = w.add_bytes(json.dumps({"schemaVersion": 1, "mediaType": schema1,
                                   "fsLayers": []}).encode(), schema1)
    w.tag(desc, "old")
    return Run(["validate", f"oci:{root}:old", "-q"], 2, ("unsupported manifest type", schema1),
               keep=(root,))


@case
def case_oci_config_corrupt(ctx: Ctx) -> Run:
    root = ctx.layout()
    _, manifest = manifest_of(root)
    path = blob(root, manifest["config"]["digest"])
    path.write_bytes(path.read_bytes().replace(b"amd64", b"arm64"))
    return Run(["validate", f"oci:{root}:v1", "-q"], 2,
               (f"blob {manifest['config']['digest']} is corrupt",), keep=(root,))


@case
def case_oci_layer_missing(ctx: Ctx) -> Run:
    root = ctx.layout()
    _, manifest = manifest_of(root)
    layer = manifest["layers"][0]["digest"]
    blob(root, layer).unlink()
    return Run(["validate", f"oci:{root}:v1", "-q"], 2, (f"blob {layer} is missing",),
               keep=(root,))


@case
def case_oci_tag_not_found(ctx: Ctx) -> Run:
    root = ctx.layout()
    return Run(["validate", f"oci:{root}:v2", "-q"], 2, ("no image tagged 'v2'",), keep=(root,))


@case
def case_oci_several_images_no_tag(ctx: Ctx) -> Run:
    root = ctx.layout(tag="a")
    image_layout(root, "b", extra=Layer().file("/etc/b", b"b"))
    return Run(["validate", f"oci:{root}", "-q"], 2, ("holds 2 images; name one of ['a', 'b']",),
               keep=(root,))


@case
def case_oci_empty_layout(ctx: Ctx) -> Run:
    root = ctx.path("empty")
    LayoutWriter(root)
    return Run(["validate", f"oci:{root}", "-q"], 2, ("the layout holds no image",),
               keep=(root,))


@case
def case_oci_index_without_this_platform(ctx: Ctx) -> Run:
    root = ctx.path("l")
    write_platform_index(root, "multi", archs=("arm64", "s390x"))
    return Run(["validate", f"oci:{root}:multi", "-q"], 2,
               ("no manifest for linux/amd64 (has: linux/arm64, linux/s390x)",), keep=(root,))


@case
def case_oci_image_not_bootable(ctx: Ctx) -> Run:
    root = ctx.layout(labels={})
    return Run(["validate", f"oci:{root}:v1", "-q"], 2, ("not a bootable OS image",),
               keep=(root,))


@case
def case_oci_archive_missing(ctx: Ctx) -> Run:
    return Run(["validate", f"oci-archive:{ctx.path('none.tar')}", "-q"], 2, ("no such file",),
               keep=(ctx.path("none.tar"),))


@case
def case_oci_archive_not_a_tar(ctx: Ctx) -> Run:
    archive = ctx.write("image.tar", os.urandom(4096))
    return Run(["validate", f"oci-archive:{archive}", "-q"], 2,
               ("not a readable tar archive",), keep=(archive,))


@case
def case_oci_archive_without_index(ctx: Ctx) -> Run:
    root = ctx.layout()
    (root / "index.json").unlink()
    archive = ctx.path("image.tar")
    subprocess.run(["tar", "-cf", str(archive), "-C", str(root), "."], check=True)
    return Run(["validate", f"oci-archive:{archive}", "-q"], 2,
               ("not an OCI archive (no index.json)",), keep=(archive,))


# -- image references -----------------------------------------------------------------------------


@case
def case_ref_empty(ctx: Ctx) -> Run:
    return Run(["validate", "", "-q"], 2, ("empty image reference",))


@case
def case_ref_oci_without_path(ctx: Ctx) -> Run:
    return Run(["validate", "oci:", "-q"], 2, ("oci: needs a path",))


@case
def case_ref_unsupported_transport(ctx: Ctx) -> Run:
    return Run(["validate", "docker-archive:image.tar", "-q"], 2,
               ("transport docker-archive: is not supported",))


@case
def case_ref_bad_digest(ctx: Ctx) -> Run:
    return Run(["inspect", "docker://127.0.0.1:5000/nodes/web@sha256:abc"], 2,
               ("not a valid image reference",))


@case
def case_ref_uppercase_repository(ctx: Ctx) -> Run:
    return Run(["inspect", "docker://127.0.0.1:5000/Nodes/web:v1"], 2,
               ("repository name must be lowercase",))


@case
def case_ref_empty_tag(ctx: Ctx) -> Run:
    return Run(["pull", "docker://127.0.0.1:5000/nodes/web:", f"oci:{ctx.path('out')}"], 2,
               ("not a valid image reference",), keep=(ctx.path("out"),))


@case
def case_ref_tag_and_digest(ctx: Ctx) -> Run:
    return Run(["inspect", f"docker://127.0.0.1:5000/nodes/web:v1@sha256:{'a' * 64}"], 2,
               ("name a tag or a digest, not both",))


@case
def case_push_to_a_digest(ctx: Ctx) -> Run:
    root = ctx.layout()
    return Run(["push", f"oci:{root}:v1", f"127.0.0.1:{closed_port()}/x@sha256:{'a' * 64}",
                "--no-validate", "-q"], 2, ("push to a tag (HOST/REPO:TAG), not a digest",),
               keep=(root,))


@case
def case_push_without_a_registry_name(ctx: Ctx) -> Run:
    return Run(["push", "my-node:v1", "-q"], 2, ("name a destination (HOST/REPO[:TAG])",))


@case
def case_pull_into_an_archive(ctx: Ctx) -> Run:
    out = ctx.path("out.tar")
    return Run(["pull", "docker://127.0.0.1:5000/nodes/web:v1", f"oci-archive:{out}", "-q"], 2,
               ("pull into oci:DIR[:TAG] or containers-storage:NAME",), keep=(out,))


# -- keys and passphrases -------------------------------------------------------------------------


def _sign(ctx: Ctx, key: Path, *extra: str) -> tuple[list[str], Path]:
    root = ctx.layout()
    return ["sign", f"oci:{root}:v1", "--key", str(key), "--identity", IDENTITY, *extra], root


@case
def case_key_missing(ctx: Ctx) -> Run:
    argv, root = _sign(ctx, ctx.path("none.key"))
    return Run(argv, 2, ("cannot read key", "none.key"), keep=(root,),
               env={"NESTBUILD_PASSWORD": PASSPHRASE})


@case
def case_key_path_with_escapes_and_markup(ctx: Ctx) -> Run:
    argv, root = _sign(ctx, ctx.path("[/red]\x1b[2J.key"))
    return Run(argv, 2, ("cannot read key", "[/red]\\x1b[2J.key"), keep=(root,),
               env={"NESTBUILD_PASSWORD": PASSPHRASE})


@case
def case_key_is_the_public_key(ctx: Ctx) -> Run:
    _, pub = ctx.keypair()
    argv, root = _sign(ctx, pub)
    return Run(argv, 2, ("is a public key; signing needs the private key",), keep=(root,),
               env={"NESTBUILD_PASSWORD": PASSPHRASE})


@case
def case_key_is_a_certificate(ctx: Ctx) -> Run:
    cert = ctx.write("cert.pem", "-----BEGIN CERTIFICATE-----\n"
                     + base64.b64encode(os.urandom(300)).decode() + "\n-----END CERTIFICATE-----\n")
    argv, root = _sign(ctx, cert)
    return Run(argv, 2, ("is a PEM 'CERTIFICATE', not a private key",), keep=(root,),
               env={"NESTBUILD_PASSWORD": PASSPHRASE})


@case
def case_key_wrong_passphrase(ctx: Ctx) -> Run:
    key, _ = ctx.keypair()
    argv, root = _sign(ctx, key)
    return Run(argv, 2, (f"wrong passphrase for {key}",), keep=(root,),
               env={"NESTBUILD_PASSWORD": "not-" + PASSPHRASE}, secrets=("not-" + PASSPHRASE,))


@case
def case_key_passphrase_file_missing(ctx: Ctx) -> Run:
    key, _ = ctx.keypair()
    argv, root = _sign(ctx, key, "--passphrase-file", str(ctx.path("none.txt")))
    return Run(argv, 2, ("cannot read passphrase file", "No such file or directory"),
               keep=(root,))


@case
def case_keygen_passphrase_file_is_a_directory(ctx: Ctx) -> Run:
    ctx.path("pw").mkdir()
    prefix = ctx.path("keys/release")
    return Run(["keygen", "--output-prefix", str(prefix), "--passphrase-file",
                str(ctx.path("pw"))], 2, ("cannot read passphrase file", "Is a directory"),
               keep=(ctx.path("keys"),))


@case
def case_keygen_public_key_exists(ctx: Ctx) -> Run:
    pub = ctx.write("keys/release.pub", b"an old public key\n")
    return Run(["keygen", "--output-prefix", str(ctx.path("keys/release"))], 2,
               (f"{pub} already exists (use --force to replace it)",), keep=(ctx.path("keys"),),
               env={"NESTBUILD_PASSWORD": PASSPHRASE})


@case
def case_keygen_under_a_file(ctx: Ctx) -> Run:
    # a missing directory is made (0700: docs/signing.md's keys/release); one under a file
    # cannot be
    file = ctx.write("file", "a file, not a directory\n")
    return Run(["keygen", "--output-prefix", str(file / "keys" / "release")], 2,
               ("--output-prefix: cannot create", "Not a directory"), keep=(file,),
               env={"NESTBUILD_PASSWORD": PASSPHRASE})


@case
def case_verify_with_an_empty_key_file(ctx: Ctx) -> Run:
    root = ctx.layout()
    empty = ctx.write("empty.pub", b"")
    return Run(["verify", f"oci:{root}:v1", "--key", str(empty)], 2,
               ("is not a PEM file (no -----BEGIN line)",), keep=(root,))


@case
def case_sign_bad_annotation(ctx: Ctx) -> Run:
    key, _ = ctx.keypair()
    argv, root = _sign(ctx, key, "-a", "no-equals-sign")
    return Run(argv, 2, ("--annotation 'no-equals-sign': expected KEY=VALUE",), keep=(root,),
               env={"NESTBUILD_PASSWORD": PASSPHRASE})


# -- registries -----------------------------------------------------------------------------------


def _push_layout(ctx: Ctx, reg: Registry, name: str, tag: str = "v1") -> tuple[Path, str]:
    """A layout image pushed to ``reg`` (plain) as NAME:TAG; (layout, manifest digest)."""
    root = ctx.layout(tag=tag)
    result = push(f"oci:{root}:{tag}", f"{reg.host}/{name}:{tag}", quiet=True)
    return root, result.digest


def _stored(reg: Registry, digest: str) -> Path:
    hexdigest = digest.split(":", 1)[1]
    return (reg.storage_dir / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest
            / "data")


@case
def case_registry_connection_refused(ctx: Ctx) -> Run:
    out = ctx.path("out")
    return Run(["pull", f"docker://127.0.0.1:{closed_port()}/nodes/web:v1", f"oci:{out}", "-q"],
               2, ("cannot connect (connection refused)",), keep=(out,))


@case
def case_registry_tls_unknown_ca(ctx: Ctx) -> Run:
    reg, name = ctx.tls, repo()
    root = ctx.layout()
    return Run(["push", f"oci:{root}:v1", f"{reg.host}/{name}:v1", "--no-validate", "-q",
                "--authfile", str(reg.auth_file)], 2,
               ("TLS certificate not trusted", "pass --cert-dir DIR"), keep=(root,),
               state=(registry_state(reg, name, authfile=reg.auth_file),))


@case
def case_registry_tls_other_ca_in_cert_dir(ctx: Ctx) -> Run:
    from registryfixtures import make_pki

    reg = ctx.tls
    other = make_pki(ctx.path("other-pki"))
    certs = ctx.path("certs")
    certs.mkdir()
    shutil.copyfile(other.ca_cert, certs / "ca.crt")
    return Run(["inspect", f"docker://{reg.host}/nodes/web:v1", "--cert-dir", str(certs),
                "--authfile", str(reg.auth_file)], 2, ("TLS certificate not trusted",))


@case
def case_registry_cert_dir_missing(ctx: Ctx) -> Run:
    out = ctx.path("out")
    return Run(["pull", f"docker://{ctx.tls.host}/nodes/web:v1", f"oci:{out}", "-q",
                "--cert-dir", str(ctx.path("no-certs"))], 2,
               (f"--cert-dir {ctx.path('no-certs')}: no such directory",), keep=(out,))


@case
def case_registry_client_cert_without_key(ctx: Ctx) -> Run:
    reg = ctx.tls
    certs = ctx.path("certs")
    certs.mkdir()
    shutil.copyfile(reg.cert_dir / "ca.crt", certs / "ca.crt")
    shutil.copyfile(reg.cert_dir / "client.cert", certs / "client.cert")
    return Run(["inspect", f"docker://{reg.host}/nodes/web:v1", "--cert-dir", str(certs)], 2,
               ("client.cert: client certificate without client.key",))


@case
def case_registry_ca_file_not_a_certificate(ctx: Ctx) -> Run:
    certs = ctx.path("certs")
    ctx.write("certs/ca.crt", "not a certificate\n")
    return Run(["inspect", f"docker://{ctx.tls.host}/nodes/web:v1", "--cert-dir", str(certs)], 2,
               ("cannot load the CA certificates",))


def _wrong_password(ctx: Ctx, reg: Registry) -> tuple[Path, str]:
    wrong = "wrong-" + uuid.uuid4().hex
    token = base64.b64encode(f"{reg.username}:{wrong}".encode()).decode()
    return ctx.write("auth.json", json.dumps({"auths": {reg.host: {"auth": token}}})), wrong


@case
def case_registry_wrong_password_basic(ctx: Ctx) -> Run:
    reg, name = ctx.tls, repo()
    authfile, wrong = _wrong_password(ctx, reg)
    root = ctx.layout()
    return Run(["push", f"oci:{root}:v1", f"{reg.host}/{name}:v1", "--no-validate", "-q",
                "--authfile", str(authfile), "--cert-dir", str(reg.cert_dir)], 2,
               (f"credentials for {reg.username} from {authfile} were refused",),
               keep=(root, authfile), secrets=(wrong,),
               state=(registry_state(reg, name, authfile=reg.auth_file),))


@case
def case_registry_wrong_password_token(ctx: Ctx) -> Run:
    reg: Registry = ctx.fixture("token_registry")
    name = repo()
    authfile, wrong = _wrong_password(ctx, reg)
    root = ctx.layout()
    return Run(["push", f"oci:{root}:v1", f"{reg.host}/{name}:v1", "--no-validate", "-q",
                "--authfile", str(authfile), "--cert-dir", str(reg.cert_dir)], 2,
               (f"token service refused the request as {reg.username}", str(authfile)),
               keep=(root, authfile), secrets=(wrong,),
               state=(registry_state(reg, name, authfile=reg.auth_file),))


@case
def case_registry_no_credentials(ctx: Ctx) -> Run:
    reg = ctx.tls
    authfile = ctx.write("auth.json", "{}")
    return Run(["inspect", f"docker://{reg.host}/nodes/web:v1", "--authfile", str(authfile),
                "--cert-dir", str(reg.cert_dir)], 2,
               ("authentication required and no credentials", f"looked in {authfile}",
                f"nestbuild login {reg.host}"), keep=(authfile,))


@case
def case_registry_500_on_upload_start(ctx: Ctx) -> Run:
    proxy: FaultProxy = ctx.fixture("fault_proxy")
    name = repo()
    root = ctx.layout()
    proxy.fail_next(100, 500, method="POST", path="/blobs/uploads/", retry_after=0)
    return Run(["push", f"oci:{root}:v1", f"{proxy.host}/{name}:v1", "--no-validate", "-q",
                "--jobs", "1"], 2, (f"starting an upload to {name}: HTTP 500",), keep=(root,),
               state=(registry_state(ctx.registry, name),))


@case
def case_registry_500_finishing_a_blob(ctx: Ctx) -> Run:
    proxy: FaultProxy = ctx.fixture("fault_proxy")
    name = repo()
    root = ctx.layout()
    proxy.fail_next(100, 500, method="PUT", path="/blobs/uploads/", retry_after=0)
    return Run(["push", f"oci:{root}:v1", f"{proxy.host}/{name}:v1", "--no-validate", "-q",
                "--jobs", "1"], 2, ("finishing blob sha256:", f"in {name}: HTTP 500"),
               keep=(root,), state=(lambda: ctx.registry.client().get_manifest(name, "v1"),))


@case
def case_registry_500_storing_the_manifest(ctx: Ctx) -> Run:
    proxy: FaultProxy = ctx.fixture("fault_proxy")
    name = repo()
    root = ctx.layout()
    proxy.fail_next(100, 500, method="PUT", path="/manifests/", retry_after=0)
    return Run(["push", f"oci:{root}:v1", f"{proxy.host}/{name}:v1", "--no-validate", "-q"], 2,
               (f"storing manifest {name}:sha256:", "HTTP 500"), keep=(root,),
               state=(lambda: ctx.registry.client().get_manifest(name, "v1"),))


@case
def case_registry_truncated_blob(ctx: Ctx) -> Run:
    reg, name = ctx.registry, repo()
    root, _ = _push_layout(ctx, reg, name)
    _, manifest = manifest_of(root)
    layer = manifest["layers"][0]["digest"]
    data = _stored(reg, layer)
    data.write_bytes(data.read_bytes()[: manifest["layers"][0]["size"] // 2])
    out = ctx.path("out")
    image_layout(out, "keep", extra=Layer().file("/etc/keep", b"keep"))  # it must keep this
    return Run(["pull", f"docker://{reg.host}/{name}:v1", f"oci:{out}:v1", "-q"], 1,
               (f"blob {layer[:19]} is corrupt",), keep=(out / "index.json", blob(out, layer)))


@case
def case_registry_manifest_does_not_match_its_digest(ctx: Ctx) -> Run:
    reg, name = ctx.registry, repo()
    _, digest = _push_layout(ctx, reg, name)
    data = _stored(reg, digest)
    data.write_bytes(data.read_bytes().replace(b'"schemaVersion"', b'"schemaVersion" '))
    out = ctx.path("out")
    return Run(["pull", f"docker://{reg.host}/{name}@{digest}", f"oci:{out}", "-q"], 1,
               ("the manifest served does not match its digest",), keep=(out,))


@case
def case_registry_manifest_too_large(ctx: Ctx) -> Run:
    liar = ctx.fixture("lying_registry")
    pad = "x" * (5 << 20)
    liar.routes["/v2/nodes/web/manifests/v1"] = (200, {"Content-Type": OCI_MANIFEST}, json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [],
         "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": "sha256:" + "0" * 64, "size": 2},
         "annotations": {"padding": pad}}).encode())
    return Run(["inspect", f"docker://{liar.host}/nodes/web:v1"], 2,
               ("the manifest is larger than",))


@case
def case_registry_blob_longer_than_its_descriptor(ctx: Ctx) -> Run:
    liar = ctx.fixture("lying_registry")
    _, manifest = serve_image(liar, ctx.layout())
    layer = manifest["layers"][0]
    path = f"/v2/nodes/web/blobs/{layer['digest']}"
    status, headers, data = liar.routes[path]
    liar.routes[path] = (status, headers, data + bytes(8 << 20))  # an endless blob, nearly
    out = ctx.path("out")
    image_layout(out, "keep", extra=Layer().file("/etc/keep", b"keep"))
    return Run(["pull", f"docker://{liar.host}/nodes/web:v1", f"oci:{out}:v1", "-q"], 1,
               (f"blob {layer['digest'][:19]} is longer than the {layer['size']} bytes its "
                "descriptor says",), keep=(out / "index.json", blob(out, layer["digest"])))


@case
def case_registry_error_text_with_escapes_and_markup(ctx: Ctx) -> Run:
    liar = ctx.fixture("lying_registry")
    said = "[/bold red]\x1b[2J\nnestbuild: PASSED"
    liar.routes["/v2/nodes/web/manifests/v1"] = (400, {"Content-Type": "application/json"},
                                                 json.dumps({"errors": [
                                                     {"code": "DENIED", "message": said}]})
                                                 .encode())
    return Run(["inspect", f"docker://{liar.host}/nodes/web:v1"], 2,  # quoted, on one line
               ("HTTP 400 (DENIED: [/bold red]", "[2J", "nestbuild: PASSED)"))


def _redirect_layer(ctx: Ctx, location: str) -> Run:
    liar = ctx.fixture("lying_registry")
    _, manifest = serve_image(liar, ctx.layout())
    layer = manifest["layers"][0]["digest"]
    liar.routes[f"/v2/nodes/web/blobs/{layer}"] = (307, {"Location": location}, b"")
    out = ctx.path("out")
    image_layout(out, "keep", extra=Layer().file("/etc/keep", b"keep"))
    return Run(["pull", f"docker://{liar.host}/nodes/web:v1", f"oci:{out}:v1", "-q"], 2, (),
               keep=(out / "index.json", blob(out, layer)))


@case
def case_registry_redirect_to_a_malformed_host(ctx: Ctx) -> Run:
    run = _redirect_layer(ctx, "http://storage example/blob")
    run.says = ("failed (URL can't contain control characters",)
    return run


@case
def case_registry_redirect_to_a_file_url(ctx: Ctx) -> Run:
    run = _redirect_layer(ctx, "file:///etc/passwd")
    run.says = ("redirected to file:///etc/passwd, which is not HTTP",)
    return run


@case
def case_registry_index_without_this_platform(ctx: Ctx) -> Run:
    reg, name = ctx.registry, repo()
    root = ctx.path("l")
    write_platform_index(root, "multi", archs=("arm64", "s390x"))
    push(f"oci:{root}:multi", f"{reg.host}/{name}:multi", quiet=True)
    out = ctx.path("out")
    return Run(["pull", f"docker://{reg.host}/{name}:multi", f"oci:{out}", "-q"], 2,
               ("no manifest for linux/amd64 (has: linux/arm64, linux/s390x)",), keep=(out,))


@case
def case_registry_inspect_missing_tag(ctx: Ctx) -> Run:
    reg, name = ctx.registry, repo()
    _push_layout(ctx, reg, name)
    return Run(["inspect", f"docker://{reg.host}/{name}:v2"], 2,
               (f"docker://{reg.host}/{name}:v2: no such image in the registry",))


@case
def case_registry_pull_missing_repository(ctx: Ctx) -> Run:
    out = ctx.path("out")
    return Run(["pull", f"docker://{ctx.registry.host}/{repo()}:v1", f"oci:{out}", "-q"], 2,
               ("no such image in the registry",), keep=(out,))


# -- pushing --------------------------------------------------------------------------------------


@case
def case_push_unknown_preset(ctx: Ctx) -> Run:
    reg, name = ctx.registry, repo()
    root = ctx.layout()
    return Run(["push", f"oci:{root}:v1", f"{reg.host}/{name}:v1", "-q", "--preset", "lenient"],
               2, ("unknown policy preset 'lenient'",), keep=(root,),
               state=(registry_state(reg, name),))


@case
def case_push_policy_with_unknown_rule(ctx: Ctx) -> Run:
    reg, name = ctx.registry, repo()
    root = ctx.layout()
    policy = ctx.write("policy.yaml", "extends: strict\nrules:\n  no-such-rule: error\n")
    return Run(["push", f"oci:{root}:v1", f"{reg.host}/{name}:v1", "-q", "--policy",
                str(policy)], 2, (f"{policy}:3: unknown rule 'no-such-rule'",),
               keep=(root,), state=(registry_state(reg, name),))


@case
def case_push_wrong_passphrase_uploads_nothing(ctx: Ctx) -> Run:
    reg, name = ctx.registry, repo()
    root = ctx.layout()
    key, _ = ctx.keypair()
    return Run(["push", f"oci:{root}:v1", f"{reg.host}/{name}:v1", "-q", "--no-validate",
                "--sign-key", str(key)], 2, (f"wrong passphrase for {key}",), keep=(root,),
               env={"NESTBUILD_PASSWORD": "not-" + PASSPHRASE},
               state=(registry_state(reg, name),))


@case
def case_push_digestfile_in_a_missing_directory(ctx: Ctx) -> Run:
    reg, name = ctx.registry, repo()
    root = ctx.layout()
    digestfile = ctx.path("no/such/dir/digest")
    return Run(["push", f"oci:{root}:v1", f"{reg.host}/{name}:v1", "-q", "--no-validate",
                "--digestfile", str(digestfile)], 2, ("--digestfile", "no such directory"),
               keep=(root, ctx.path("no")), state=(registry_state(reg, name),))


# -- credentials ----------------------------------------------------------------------------------


def _inspect_tls(ctx: Ctx, authfile: Path, **env: str) -> Run:
    reg = ctx.tls
    return Run(["inspect", f"docker://{reg.host}/nodes/web:v1", "--authfile", str(authfile),
                "--cert-dir", str(reg.cert_dir)], 2, (), keep=(authfile,), env=dict(env))


def _helper(ctx: Ctx, name: str, script: str) -> dict[str, str]:
    """A docker-credential-NAME on a PATH of its own (in front of the real one)."""
    ctx.write(f"bin/docker-credential-{name}", "#!/bin/sh\n" + script, 0o755)
    return {"PATH": f"{ctx.path('bin')}:{os.environ['PATH']}"}


@case
def case_auth_file_not_json(ctx: Ctx) -> Run:
    authfile = ctx.write("auth.json", '{"auths": {\n  "x": }\n')
    run = _inspect_tls(ctx, authfile)
    run.says = (f"{authfile}:2: not valid JSON",)
    return run


@case
def case_auth_file_not_an_object(ctx: Ctx) -> Run:
    authfile = ctx.write("auth.json", '["user", "password"]')
    run = _inspect_tls(ctx, authfile)
    run.says = (f"{authfile}: an auth file must hold a JSON object",)
    return run


@case
def case_auth_file_unreadable(ctx: Ctx) -> Run:
    authfile = ctx.path("auth.json")
    authfile.mkdir()
    run = _inspect_tls(ctx, authfile)
    run.says = (f"{authfile}: cannot read credentials (Is a directory)",)
    return run


@case
def case_auth_entry_not_base64(ctx: Ctx) -> Run:
    authfile = ctx.write("auth.json", json.dumps({"auths": {ctx.tls.host: {"auth": "%%%"}}}))
    run = _inspect_tls(ctx, authfile)
    run.says = (f"{authfile}: an 'auth' entry is not base64 of USER:PASSWORD",)
    return run


@case
def case_auth_helper_fails(ctx: Ctx) -> Run:
    authfile = ctx.write("auth.json", json.dumps({"credHelpers": {ctx.tls.host: "broken"}}))
    run = _inspect_tls(ctx, authfile, **_helper(
        ctx, "broken", "echo 'credentials not found in native keychain'\nexit 1\n"))
    run.says = ("authentication required and no credentials",)
    return run


@case
def case_auth_helper_not_installed(ctx: Ctx) -> Run:
    authfile = ctx.write("auth.json", json.dumps({"credHelpers": {ctx.tls.host: "absent"}}))
    run = _inspect_tls(ctx, authfile)
    run.says = ("credential helper docker-credential-absent is configured but not installed",)
    return run


@case
def case_auth_helper_answers_garbage(ctx: Ctx) -> Run:
    authfile = ctx.write("auth.json", json.dumps({"credsStore": "garbage"}))
    run = _inspect_tls(ctx, authfile, **_helper(ctx, "garbage", "echo '{\"Username\": 1'\n"))
    run.says = ("credential helper docker-credential-garbage returned something unreadable",)
    return run


def _login(ctx: Ctx, authfile: Path, password: str, *flags: str) -> Run:
    reg = ctx.tls
    return Run(["login", reg.host, "-u", str(reg.username), "--authfile", str(authfile),
                "--cert-dir", str(reg.cert_dir), *flags], 2, (), keep=(authfile,),
               stdin=password + "\n", secrets=(password,) if password else ())


@case
def case_login_wrong_password_keeps_the_auth_file(ctx: Ctx) -> Run:
    other = {"auths": {"other.example": {"auth": base64.b64encode(b"u:p").decode()}}}
    authfile = ctx.write("auth.json", json.dumps(other))
    run = _login(ctx, authfile, "wrong-" + uuid.uuid4().hex, "--password-stdin")
    run.says = (f"credentials for {ctx.tls.username} from the login command were refused",)
    return run


@case
def case_login_into_a_malformed_auth_file(ctx: Ctx) -> Run:
    authfile = ctx.write("auth.json", "{ not json")
    run = _login(ctx, authfile, str(ctx.tls.password), "--password-stdin")
    run.says = (f"{authfile}:1: not valid JSON",)
    return run


@case
def case_login_empty_password(ctx: Ctx) -> Run:
    run = _login(ctx, ctx.path("auth.json"), "", "--password-stdin")
    run.says = ("empty password",)
    return run


@case
def case_login_without_a_password_source(ctx: Ctx) -> Run:
    run = _login(ctx, ctx.path("auth.json"), "")
    run.says = ("no password: use --password-stdin or set NESTBUILD_REGISTRY_PASSWORD",)
    return run


@case
def case_login_to_a_malformed_registry_name(ctx: Ctx) -> Run:
    authfile = ctx.path("auth.json")
    return Run(["login", "registry example.com", "-u", "ci", "--password-stdin", "--authfile",
                str(authfile)], 2,
               ("'registry example.com': not a registry name (HOST[:PORT])",),
               keep=(authfile,), stdin="s3cret\n", secrets=("s3cret",))


@case
def case_logout_when_not_logged_in(ctx: Ctx) -> Run:
    authfile = ctx.write("auth.json", json.dumps({"auths": {}}))
    return Run(["logout", "registry.example.com", "--authfile", str(authfile)], 1,
               ("not logged in to registry.example.com",), keep=(authfile,), prefix="")



# -- nodes ----------------------------------------------------------------------------------------


@dataclass
class Node:
    """A sysroot with one deployment whose policy.json accepts REGISTRY/accept/* unsigned and
    rejects everything else, and images in the registry that it must refuse."""

    sysroot: Path
    host: str


@pytest.fixture(scope="module")
def node(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    root = tmp_path_factory.mktemp("node")
    policy = {"default": [{"type": "reject"}], "transports": {"docker": {
        f"{registry.host}/accept": [{"type": "insecureAcceptAnything"}]}}}
    etc = Layer().dir("/etc/containers").file("/etc/containers/policy.json",
                                              json.dumps(policy).encode())
    image_layout(root / "image", "v1", extra=etc)
    sysroot = root / "sysroot"
    deploy.deploy_image(open_image(f"oci:{root / 'image'}:v1"), sysroot, "nestos",
                        origin_ref=f"{registry.host}/accept/node:v1")
    image_layout(root / "unbootable", "v1", labels={})
    image_layout(root / "arm", "v1", architecture="arm64")
    for layout, name in (("image", "other/node"), ("unbootable", "accept/unbootable"),
                         ("arm", "accept/arm")):
        push(f"oci:{root / layout}:v1", f"{registry.host}/{name}:v1", quiet=True)
    yield Node(sysroot, registry.host)
    subprocess.run(["chattr", "-R", "-i", str(root)], check=False, stderr=subprocess.DEVNULL)


def _rebase(ctx: Ctx, name: str, *extra: str) -> list[str]:
    node: Node = ctx.fixture("node")
    return ["rebase", f"docker://{node.host}/{name}:v1", "--via", "ostree", "--sysroot",
            str(node.sysroot), "-q", *extra]


@case
def case_node_rollback_without_a_previous_deployment(ctx: Ctx) -> Run:
    node: Node = ctx.fixture("node")
    return Run(["node", "rollback", "--sysroot", str(node.sysroot)], 2,
               ("there is no previous deployment to roll back to",), keep=(node.sysroot,))


@case
def case_node_rollback_not_a_sysroot(ctx: Ctx) -> Run:
    ctx.write("dir/file", "x")
    return Run(["node", "rollback", "--sysroot", str(ctx.path("dir"))], 2,
               ("not an ostree sysroot",), keep=(ctx.path("dir"),))


@case
def case_node_rebase_refused_by_policy(ctx: Ctx) -> Run:
    node: Node = ctx.fixture("node")
    return Run(_rebase(ctx, "other/node"), 1,
               (f"refused: policy.json rejects {node.host}/other/node (scope 'default')",
                "the sysroot is unchanged"), keep=(node.sysroot,))


@case
def case_node_rebase_unbootable_image(ctx: Ctx) -> Run:
    node: Node = ctx.fixture("node")
    return Run(_rebase(ctx, "accept/unbootable"), 1,
               ("not bootable", "the sysroot is unchanged"), keep=(node.sysroot,))


@case
def case_node_rebase_other_architecture(ctx: Ctx) -> Run:
    node: Node = ctx.fixture("node")
    return Run(_rebase(ctx, "accept/arm"), 1,
               ("built for arm64, this node is amd64", "the sysroot is unchanged"),
               keep=(node.sysroot,))


@case
def case_node_rebase_missing_image(ctx: Ctx) -> Run:
    node: Node = ctx.fixture("node")
    return Run(_rebase(ctx, "accept/none"), 2, ("no such image in the registry",),
               keep=(node.sysroot,))


@case
def case_node_rebase_without_sysroot(ctx: Ctx) -> Run:
    return Run(["rebase", "docker://127.0.0.1:5000/nodes/web:v1", "--via", "ostree"], 2,
               ("--via ostree needs --sysroot DIR",))


@case
def case_node_first_rebase_without_trust(ctx: Ctx) -> Run:
    sysroot = ctx.path("sysroot")
    sysroot.mkdir()
    return Run(["rebase", f"docker://{ctx.registry.host}/accept/arm:v1", "--via", "ostree",
                "--sysroot", str(sysroot), "-q"], 2,
               ("no deployment yet, so no trust to check against; pass --trust DIR",),
               keep=(sysroot,))


def _empty(path: Path) -> Callable[[], object]:
    """What is inside ``path``: a refused first deploy may leave the sysroot directory it
    was given (it locks it), never anything in it."""
    return lambda: sorted(os.listdir(path)) if path.exists() else []


@case
def case_node_rebase_trust_without_policy_json(ctx: Ctx) -> Run:
    node: Node = ctx.fixture("node")
    trust = ctx.path("trust")
    trust.mkdir()
    sysroot = ctx.path("sysroot")
    return Run(["rebase", f"docker://{node.host}/accept/arm:v1", "--via", "ostree",
                "--sysroot", str(sysroot), "--trust", str(trust), "-q"], 2,
               ("no policy.json",), keep=(trust,), state=(_empty(sysroot),))


@case
def case_node_rebase_malformed_policy_json(ctx: Ctx) -> Run:
    node: Node = ctx.fixture("node")
    ctx.write("trust/etc/containers/policy.json", json.dumps({"default": [{"type": "reject"}],
                                                              "transports": ["docker"]}))
    sysroot = ctx.path("sysroot")
    return Run(["rebase", f"docker://{node.host}/accept/arm:v1", "--via", "ostree",
                "--sysroot", str(sysroot), "--trust", str(ctx.path("trust")), "-q"], 2,
               ("policy.json",), keep=(ctx.path("trust"),), state=(_empty(sysroot),))


@case
def case_node_trust_into_a_file(ctx: Ctx) -> Run:
    _, pub = ctx.keypair()
    out = ctx.write("overlay", "a file, not a directory\n")
    return Run(["node", "trust", "registry.example.com/nodes/web", "--key", str(pub), "--out",
                str(out)], 2, (str(out),), keep=(out,))


@case
def case_node_trust_with_a_file_in_the_way(ctx: Ctx) -> Run:
    _, pub = ctx.keypair()
    ctx.write("overlay/etc/pki", "a file where the keys' directory goes\n")
    return Run(["node", "trust", "registry.example.com/nodes/web", "--key", str(pub), "--out",
                str(ctx.path("overlay"))], 2,
               (f"{ctx.path('overlay/etc/pki')}: not a directory", "nothing written"),
               keep=(ctx.path("overlay"),))


@case
def case_node_trust_extends_a_malformed_policy(ctx: Ctx) -> Run:
    _, pub = ctx.keypair()
    policy = ctx.write("overlay/etc/containers/policy.json", json.dumps(
        {"default": [{"type": "reject"}], "transports": {"docker": []}}))
    return Run(["node", "trust", "registry.example.com/nodes/web", "--key", str(pub), "--out",
                str(ctx.path("overlay"))], 2, (str(policy),), keep=(ctx.path("overlay"),))


# -- building and validating -------------------------------------------------------------------


@case
def case_build_without_a_containerfile(ctx: Ctx) -> Run:
    context = ctx.path("context")
    context.mkdir()
    return Run(["build", str(context), "-t", "localhost/nestbuild-test/none:x", "-q"], 2,
               ("no Containerfile or Dockerfile",), keep=(context,), cwd=ctx.tmp)


@case
def case_build_from_scratch(ctx: Ctx) -> Run:
    ctx.write("context/Containerfile", "FROM scratch\nCOPY motd /etc/motd\n")
    ctx.write("context/motd", "hi\n")
    return Run(["build", str(ctx.path("context")), "-t", "localhost/nestbuild-test/none:x",
                "-q"], 2, ("not a bootable OS base",), keep=(ctx.path("context"),),
               cwd=ctx.tmp)


@case
def case_build_from_a_missing_base(ctx: Ctx) -> Run:
    ctx.write("context/Containerfile", "FROM localhost/nestbuild-test/no-such-base:x\n")
    return Run(["build", str(ctx.path("context")), "-t", "localhost/nestbuild-test/none:x",
                "-q"], 2, ("not in local storage",), keep=(ctx.path("context"),), cwd=ctx.tmp)


@case
def case_init_into_a_file(ctx: Ctx) -> Run:
    target = ctx.write("project", "a file\n")
    return Run(["init", str(target)], 2, (f"{target}: not a directory",), keep=(target,))


@case
def case_validate_missing_local_image(ctx: Ctx) -> Run:
    return Run(["validate", "containers-storage:localhost/nestbuild-test/no-such:image", "-q"],
               2, ("no such image in local containers-storage",))


@case
def case_validate_missing_policy_file(ctx: Ctx) -> Run:
    root = ctx.layout()
    return Run(["validate", f"oci:{root}:v1", "-q", "--policy", str(ctx.path("none.yaml"))], 2,
               ("cannot read policy (No such file or directory)",), keep=(root,))


@case
def case_validate_report_into_a_missing_directory(ctx: Ctx) -> Run:
    root = ctx.layout()
    out = ctx.path("reports/r.sarif")
    return Run(["validate", f"oci:{root}:v1", "--format", "sarif", "-o", str(out)], 2,
               ("--output", "no such directory"), keep=(root, ctx.path("reports")))


@case
def case_diff_missing_base(ctx: Ctx) -> Run:
    root = ctx.layout()
    return Run(["diff", f"oci:{root}:base", f"oci:{root}:v1", "-q"], 2,
               ("no image tagged 'base'",), keep=(root,))



@case
def case_build_digestfile_in_a_missing_directory(ctx: Ctx) -> Run:
    base = ctx.fixture("mini_base")
    ctx.write("context/Containerfile", f"FROM {base.tag}\n")
    tag = f"localhost/nestbuild-test/digestfile:{uuid.uuid4().hex[:8]}"
    return Run(["build", str(ctx.path("context")), "-t", tag, "-q", "--digestfile",
                str(ctx.path("no/such/dir/digest"))], 2, ("--digestfile", "no such directory"),
               keep=(ctx.path("context"), ctx.path("no")), cwd=ctx.tmp,
               state=(lambda: buildah.image_exists(tag),))



# -- the table ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_refused(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    run = CASES[name](Ctx(request, tmp_path))
    before = [tree(p) for p in run.keep], [s() for s in run.state]
    r = nestbuild(*run.argv, env=run.env, stdin=run.stdin, cwd=run.cwd, home=tmp_path / "home")
    line = one_line(r)
    assert (r.returncode, line.startswith(run.prefix)) == (run.code, True), (r.returncode, line)
    for needle in run.says:
        assert needle in line, (needle, line)
    for secret in run.secrets:
        assert secret not in r.stdout + r.stderr
    assert "\x1b" not in r.stdout + r.stderr  # nothing the terminal would act on
    assert ([tree(p) for p in run.keep], [s() for s in run.state]) == before
    leftovers = [p for p in tmp_path.rglob("*.tmp") if p.is_file()]
    assert leftovers == [], leftovers


# -- what a table row cannot say ------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "prog", "message"), [
    (["push", "oci:l:v1", "127.0.0.1:5000/x:v1", "--bogus"], "nestbuild push",
     "unrecognized arguments: --bogus"),
    (["node", "status", "--sysroot", "s", "--bogus"], "nestbuild node status",
     "unrecognized arguments: --bogus"),
    (["base", "build", "mini", "--bogus"], "nestbuild base build",
     "unrecognized arguments: --bogus"),
    (["sign", "oci:l:v1"], "nestbuild sign", "the following arguments are required: --key"),
    (["validate", "oci:l", "--format", "xml"], "nestbuild validate",
     "argument --format: invalid choice: 'xml'"),
    (["pull", "docker://127.0.0.1:5000/x:v1", "--tls-verify", "maybe"], "nestbuild pull",
     "argument --tls-verify: expected true or false, not 'maybe'"),
    (["bogus"], "nestbuild", "argument COMMAND: invalid choice: 'bogus'"),
], ids=["unknown-flag", "unknown-flag-of-an-action", "unknown-flag-of-base-build",
        "missing-required-option", "invalid-choice", "not-a-boolean", "unknown-command"])
def test_usage_errors_show_the_commands_own_usage(argv: list[str], prog: str, message: str,
                                                  tmp_path: Path) -> None:
    """Exit 2, the usage of the command that was mistyped (its options, not the top-level
    list of commands), then one error line."""
    r = nestbuild(*argv, home=tmp_path)
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"usage: {prog} "), r.stderr
    assert r.stderr.splitlines()[-1].startswith(f"{prog}: error: {message}"), r.stderr


def test_an_interrupted_push_tags_nothing(fault_proxy: FaultProxy, registry: Registry,
                                          tmp_path: Path) -> None:
    """Ctrl-C while the blobs go up: exit 130 with one line, and the tag never moves (the
    manifest goes up only after every blob, and the tags after the manifest)."""
    root = tmp_path / "l"
    image_layout(root)
    name = repo()
    fault_proxy.set_latency(1.0)  # every request waits: the push is still uploading below
    proc = subprocess.Popen([str(NESTBUILD), "push", f"oci:{root}:v1",
                             f"{fault_proxy.host}/{name}:v1", "--no-validate", "-q"],
                            env=environment(tmp_path / "home"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(r.method == "POST" for r in fault_proxy.requests):
            assert proc.poll() is None and time.monotonic() < deadline, proc.poll()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
        fault_proxy.passthrough()
    assert (proc.returncode, err) == (130, "error: interrupted\n")
    assert not any(r.method == "PUT" and "/manifests/" in r.path for r in fault_proxy.requests)
    assert registry.client().get_manifest(name, "v1") is None


def test_a_redirect_to_another_host_gets_no_credentials(tmp_path: Path) -> None:
    """A registry that sends a blob download to another host (as a CDN does, or as a malicious
    registry would, to collect credentials): the pull follows it and verifies the blob, and
    the other host never sees the registry's credentials."""
    image = tmp_path / "image"
    image_layout(image)
    manifest_digest, manifest = manifest_of(image)
    secret = "s3cret-" + uuid.uuid4().hex
    auth = "Basic " + base64.b64encode(f"ci:{secret}".encode()).decode()
    servers = [LyingRegistry(), LyingRegistry()]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    reg, storage = servers
    try:
        reg.basic = auth
        reg.routes[f"/v2/nodes/web/manifests/{manifest_digest}"] = (
            200, {"Content-Type": OCI_MANIFEST}, blob(image, manifest_digest).read_bytes())
        for desc in (manifest["config"], *manifest["layers"]):
            path = f"/v2/nodes/web/blobs/{desc['digest']}"
            reg.routes[path] = (307, {"Location": f"http://{storage.host}/cdn{path}"}, b"")
            storage.routes[f"/cdn{path}"] = (200, {}, blob(image, desc["digest"]).read_bytes())
        authfile = tmp_path / "auth.json"
        authfile.write_text(json.dumps({"auths": {reg.host: {"auth": auth.split()[1]}}}))
        out = tmp_path / "out"
        r = nestbuild("pull", f"docker://{reg.host}/nodes/web@{manifest_digest}", f"oci:{out}",
                      "-q", "--authfile", str(authfile), home=tmp_path / "home")
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    assert r.returncode == 0, r.stderr
    assert secret not in r.stdout + r.stderr
    assert any(h.get("Authorization") == auth for p, h in reg.seen if "/blobs/" in p)
    assert storage.seen and all("Authorization" not in h for _, h in storage.seen)
    assert open_image(f"oci:{out}").digest == manifest_digest


def test_what_an_image_says_is_shown_not_obeyed(tmp_path: Path) -> None:
    """File names and labels are the image's: a name with rich markup and a terminal escape
    (clear the screen) is listed as the characters it is, by validate and by inspect."""
    evil = "[/bold red]x\x1b[2J\u202ey"
    root = tmp_path / "l"
    image_layout(root, extra=Layer().dir("/usr/local").file(f"/usr/local/{evil}", b"x"),
                 labels={**BOOTABLE, "note": evil})
    shown = "[/bold red]x\\x1b[2J\\u202ey"
    r = nestbuild("validate", f"oci:{root}:v1", "-q", home=tmp_path / "home")
    assert (r.returncode, r.stderr) == (1, ""), r.stderr
    assert f"/usr/local/{shown}" in r.stdout and "FAILED" in r.stdout
    r2 = nestbuild("inspect", f"oci:{root}:v1", home=tmp_path / "home")
    assert (r2.returncode, r2.stderr) == (0, ""), r2.stderr
    assert f"label note={shown}" in r2.stdout
    for out in (r.stdout, r2.stdout):
        assert "\x1b" not in out and "\u202e" not in out


def test_login_makes_a_readable_auth_file_private(tls_registry: Registry, tmp_path: Path) -> None:
    """An auth.json someone left world-readable comes out of login 0600, with its other
    entries kept and the password on no output."""
    authfile = tmp_path / "auth.json"
    other = {"other.example": {"auth": base64.b64encode(b"u:p").decode()}}
    authfile.write_text(json.dumps({"auths": other}))
    authfile.chmod(0o644)
    r = nestbuild("login", tls_registry.host, "-u", str(tls_registry.username),
                  "--password-stdin", "--authfile", str(authfile), "--cert-dir",
                  str(tls_registry.cert_dir), stdin=f"{tls_registry.password}\n",
                  home=tmp_path / "home")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert str(tls_registry.password) not in r.stdout
    assert stat.S_IMODE(authfile.stat().st_mode) == 0o600
    auths = json.loads(authfile.read_text())["auths"]
    assert auths["other.example"] == other["other.example"] and tls_registry.host in auths


def test_a_failing_run_step_leaves_no_container_and_no_image(mini_base: Any,
                                                             tmp_path: Path) -> None:
    """The cause on the first line (the log tail below it, for the reader), exit 1, and no
    working container or half-built image left in local storage."""
    def containers() -> list[str]:
        out = subprocess.run(["buildah", "containers", "--quiet"], capture_output=True,
                             text=True, check=True).stdout
        return sorted(out.split())

    (tmp_path / "Containerfile").write_text(
        f"FROM {mini_base.tag}\nRUN echo step-output && exit 3\n")
    tag = f"localhost/nestbuild-test/failing:{uuid.uuid4().hex[:8]}"
    before = containers()
    r = nestbuild("build", str(tmp_path), "-t", tag, "-q", home=tmp_path / "home", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    first, *tail = [line for line in r.stderr.splitlines() if line.strip()]
    assert first.startswith("error: build failed: ") and "exit status 3" in first, first
    assert "step-output" in "\n".join(tail)
    assert containers() == before
    assert not buildah.image_exists(tag)
