"""Every parser of untrusted input raises only nestbuild's own errors, whatever it is fed.

The property, for each parser: ``parse(x)`` either returns or raises ``NestbuildError`` (the
subclass the parser documents), never a ``TypeError``, ``KeyError``, ``RecursionError``... that
the CLI would show as a traceback. Inputs are random bytes and text, but mostly valid
documents with one to three things broken (a field replaced by a JSON value of another type,
deleted, or joined by an unknown one; a tar header field rewritten with its checksum fixed), so
the tests reach past the first check into the deep code.

Profiles (tests/property_profiles.py): ``ci`` by default, small and reproducible;
``NESTBUILD_HYPOTHESIS=long`` for a longer run by hand.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import gzip
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from nestbuild import settings
from nestbuild._image import model, tarstream, tree
from nestbuild._image import reference as image_reference
from nestbuild._registry import auth, client
from nestbuild._registry import reference as registry_reference
from nestbuild.building import containerfile
from nestbuild.errors import (
    ImageError,
    LayerError,
    NestbuildError,
    PolicyFileError,
    UsageError,
)
from nestbuild.node import policy as nodepolicy
from nestbuild.node import trust
from nestbuild.signing import dsse, keyfile, keys, payload
from nestbuild.signing import signatures as signing
from nestbuild.signing.layout_store import LayoutStore
from nestbuild.validation import policy
from tests import property_profiles

property_profiles.load()

DIGEST = "sha256:" + "ab" * 32
OTHER_DIGEST = "sha256:" + "cd" * 32

# ---------------------------------------------------------------------------------------------
# strategies


#: Values that break parsers that trust JSON's shape: every type, nesting, odd numbers.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["", "sha256:", DIGEST, "../../etc/passwd", "a\x00b", "\r\n", "-1"])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)

#: Inputs that have broken JSON and YAML readers: nesting past the recursion limit, integers
#: past Python's digit limit, byte-order marks, NUL, invalid UTF-8, control characters.
hostile_bytes = st.sampled_from([
    b"[" * 5_000,
    b'{"a":' * 5_000,
    b"1" * 5_000,
    b'{"N": ' + b"9" * 5_000 + b"}",
    b"\xff\xfe{\x00}\x00",
    b"\xef\xbb\xbf{}",
    b"\x00",
    b"\xff",
    b"a: \x07\n",
    b"- " * 5_000 + b"x",
    b"NaN",
    b"-Infinity",
    b"",
])


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutated(draw: st.DrawFn, doc: Any, values: st.SearchStrategy[Any] = json_values) -> Any:
    """``doc`` with one to three changes: a value replaced (by any JSON value), a key or item
    deleted, or an unknown key added."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(doc))))
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if not path:
            if action == "replace":
                doc = draw(values)
            continue
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        if action == "replace":
            parent[last] = draw(values)
        elif action == "delete":
            del parent[last]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(values)
        else:
            parent.insert(last, draw(values))
    return doc


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


def json_inputs(valid: Any) -> st.SearchStrategy[bytes]:
    """Bytes for a JSON parser: mostly ``valid`` broken a little, else random or hostile."""
    broken = mutated(valid).map(_dumps)
    return st.one_of(
        broken, broken, broken,  # weighted: these get past the first checks
        json_values.map(_dumps),
        st.binary(max_size=64),
        hostile_bytes,
    )


def yaml_inputs(valid: Any) -> st.SearchStrategy[bytes]:
    """Bytes for a YAML parser: ``valid`` broken a little (as YAML, with tags sometimes), or
    random text with control characters, invalid UTF-8 and hostile input."""

    def dump(doc: Any) -> bytes:
        return yaml.safe_dump(doc, allow_unicode=True).encode("utf-8", "surrogatepass")

    tagged = st.tuples(mutated(valid).map(dump), st.sampled_from(
        [b"!!int abc", b"!!timestamp x", b"!!float y", b"!!binary '?'", b"!custom 1",
         b"&a [*a]", b"[1, 2]", b"{? [1]: 2}", b"\x07", b"\xff\xfe"]),
    ).map(lambda pair: pair[0].replace(b": ", b": " + pair[1] + b" #", 1))
    broken = mutated(valid).map(dump)
    return st.one_of(
        broken, broken, tagged,
        st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.binary(max_size=40),
        hostile_bytes,
    )


def reference_text() -> st.SearchStrategy[str]:
    alphabet = "abcxyz019._-/:@" + "ABC" + "\x00 é"
    pieces = st.sampled_from(["docker://", "oci:", "oci-archive:", "containers-storage:",
                              "dir:", "localhost:5000/", "127.0.0.1:5000/", "reg.example/",
                              "@" + DIGEST, "@sha256:", ":latest", ":", "/", "..",
                              "docker-archive:"])
    return st.one_of(
        st.text(max_size=40),
        st.lists(st.one_of(pieces, st.text(alphabet, max_size=8)), max_size=6).map("".join),
    )


def raises_only(call: Callable[[], object], *allowed: type[BaseException]) -> None:
    """Run ``call``: it returns, or raises one of ``allowed`` (``NestbuildError`` if none)
    with a message. (A message may quote the input, line breaks and all: the command line
    shows every message on one line, through ``nestbuild._util.terminal.printable``.)"""
    expected = allowed or (NestbuildError,)
    try:
        call()
    except expected as exc:
        assert str(exc).strip(), "an error without a message"


# ---------------------------------------------------------------------------------------------
# image references


@given(reference_text())
def test_image_reference(text: str) -> None:
    raises_only(lambda: image_reference.parse_reference(text), UsageError)


@given(reference_text())
def test_registry_reference(text: str) -> None:
    raises_only(lambda: registry_reference.parse(text), UsageError)


@given(reference_text(), reference_text(), st.sampled_from([*payload.RULES, "exactReference"]))
def test_docker_reference_and_identity(payload_ref: str, image_ref: str, rule: str) -> None:
    # parse_normalized documents ValueError (its callers turn it into their own error).
    raises_only(lambda: registry_reference.parse_normalized(payload_ref), ValueError)
    raises_only(lambda: payload.identity_matches(payload_ref, image_ref, rule),
                payload.PayloadError)


def test_reference_regex_is_linear() -> None:
    """A name that almost matches must not make the reference pattern backtrack
    exponentially: a signature payload's docker-reference comes from the signer."""
    for bad in ("reg.example/" + "a" * 64 + "!", "reg.example/" + "a-" * 64 + "!",
                "a" * 64 + "A:tag"):
        with pytest.raises(ValueError):
            registry_reference.parse_normalized(bad)


# ---------------------------------------------------------------------------------------------
# tar streams


def _octal(value: int, width: int) -> bytes:
    return oct(value)[2:].encode().rjust(width - 1, b"0") + b"\0"


def _base256(value: int, width: int) -> bytes:
    """GNU's binary number field (negative numbers too), truncated to ``width``."""
    raw = (value % (1 << (8 * width - 8))).to_bytes(width - 1, "big")
    return bytes([0xC0 if value < 0 else 0x80]) + raw


def _checksummed(block: bytearray) -> bytes:
    block[148:156] = b" " * 8
    block[148:156] = _octal(sum(block), 7) + b" "
    return bytes(block)


@st.composite
def tar_headers(draw: st.DrawFn) -> bytes:
    """One header block (checksum valid) with fields drawn freely, and a body after it."""
    block = bytearray(512)
    name = draw(st.sampled_from([b"etc/motd", b"../../x", b"/", b".wh..wh..opq", b"a/.wh.b",
                                 b".wh...", b"\xff\xfe", b""]) | st.binary(max_size=100))
    block[0:len(name)] = name
    typ = draw(st.sampled_from(list(b"0125673LKxgS\0V")) | st.sampled_from(list(b"xL")))
    block[156] = typ
    for start, width in ((100, 8), (108, 8), (116, 8), (124, 12), (329, 8), (337, 8)):
        field = draw(st.one_of(
            st.integers(0, 8 ** (width - 1) - 1).map(lambda v, w=width: _octal(v, w)),
            st.binary(min_size=width, max_size=width),
            st.integers(-(1 << 70), 1 << 70).map(lambda v, w=width: _base256(v, w)),
        ))
        block[start:start + width] = field[:width]
    if draw(st.booleans()):
        block[257:263] = b"ustar\x00"
        prefix = draw(st.binary(max_size=20))
        block[345:345 + len(prefix)] = prefix
    link = draw(st.binary(max_size=30))
    block[157:157 + len(link)] = link
    header = _checksummed(block)
    if typ in b"xg":
        records = draw(st.lists(st.tuples(
            st.sampled_from([b"size", b"uid", b"gid", b"path", b"linkpath", b"mtime",
                             b"SCHILY.xattr.security.capability"]),
            st.sampled_from([b"-1", b"abc", b"9" * 5000, b"1e3", b"", b"0", b"512",
                             b"\xff"]) | st.binary(max_size=10),
        ), min_size=1, max_size=4))
        body = b"".join(_pax_record(k, v) for k, v in records)
        body += draw(st.sampled_from([b"", b"0 x", b"-5 a=b\n", b"99999 a=b\n", b"x"]))
        size = len(body)
        header = _checksummed(bytearray(header[:124] + _octal(size, 12) + header[136:]))
    else:
        body = draw(st.binary(max_size=600))
    padding = b"\0" * (-len(body) % 512)
    return header + body + padding


def _pax_record(key: bytes, value: bytes) -> bytes:
    record = b" " + key + b"=" + value + b"\n"
    length = len(record)
    while len(str(length).encode()) + len(record) != length:
        length = len(str(length).encode()) + len(record)
    return str(length).encode() + record


def _real_tar(members: list[tuple[str, bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, body, kind in members:
            info = tarfile.TarInfo(name)
            if kind == 0:
                info.size = len(body)
                tf.addfile(info, io.BytesIO(body))
            else:
                info.type = tarfile.SYMTYPE if kind == 1 else tarfile.DIRTYPE
                info.linkname = "../" * kind + name
                info.pax_headers = {"SCHILY.xattr.user.x": "v" * kind}
                tf.addfile(info)
    return buf.getvalue()


@st.composite
def tar_streams(draw: st.DrawFn) -> bytes:
    """A real tar (Python's tarfile, PAX) or blocks drawn one by one, then mutated: bytes
    changed inside header blocks (checksum fixed or not), truncated, or extended."""
    if draw(st.booleans()):
        members = draw(st.lists(st.tuples(st.text(min_size=1, max_size=120),
                                          st.binary(max_size=700), st.integers(0, 2)),
                                min_size=1, max_size=4))
        data = bytearray(_real_tar(members))
    else:
        data = bytearray(b"".join(draw(st.lists(tar_headers(), min_size=1, max_size=4))))
    headers = [i for i in range(0, len(data) - 511, 512)
               if tarstream._checksum_ok(bytes(data[i:i + 512]))]
    for _ in range(draw(st.integers(0, 4))):
        if not headers:
            break
        at = draw(st.sampled_from(headers))
        offset = draw(st.sampled_from([0, 99, 100, 108, 116, 124, 135, 156, 157, 257, 329, 345])
                      | st.integers(0, 511))
        data[at + offset] = draw(st.integers(0, 255))
        if draw(st.integers(0, 3)):
            data[at:at + 512] = _checksummed(bytearray(data[at:at + 512]))
    cut = draw(st.sampled_from([None, None, 1, 100, 511, 513, 1000]))
    if cut is not None:
        data = data[:max(0, len(data) - cut)]
    return bytes(data + draw(st.sampled_from([b"", b"", b"\0" * 1024, b"x" * 10])))


def _members_bound(data: bytes) -> int:
    """Each member costs at least one 512-byte header: more means the reader went back."""
    return len(data) // 512 + 1


@given(tar_streams() | st.binary(max_size=2048), st.booleans())
def test_tar_stream(data: bytes, seekable: bool) -> None:
    def read() -> None:
        stream = tarstream.TarStream(io.BytesIO(data), seekable=seekable, what="layer")
        for count, member in enumerate(stream, 1):
            assert count <= _members_bound(data), "the tar reader does not move forward"
            assert member.size >= 0
            for _ in stream.body(member, chunk=256):
                pass

    raises_only(read, LayerError)


def _read_layer(fileobj: io.IOBase, data_len: int, seekable: bool) -> None:
    seen: list[bytes] = []
    items = tree.read_layer(fileobj, 1, seekable=seekable,  # type: ignore[arg-type]
                            want_digest=lambda _e: True,
                            inspect=lambda _e, body: seen.append(body))
    for count, item in enumerate(items, 1):
        assert count <= data_len // 512 + 1, "the tar reader does not move forward"
        assert isinstance(item, tree.Entry | tree.Whiteout | tree.Unsafe)


@given(tar_streams() | st.binary(max_size=2048), st.booleans())
def test_read_layer(data: bytes, seekable: bool) -> None:
    raises_only(lambda: _read_layer(io.BytesIO(data), len(data), seekable), LayerError)


@given(tar_streams(), st.sampled_from([None, 10, 30, -8]), st.integers(0, 255))
def test_read_layer_gzip(data: bytes, cut: int | None, flip: int) -> None:
    """A compressed layer (gzip, as most registries serve them) that is corrupt or cut."""
    packed = bytearray(gzip.compress(data, mtime=0))
    if cut is not None:
        packed = packed[:cut]
    elif len(packed) > 20:
        packed[len(packed) // 2] ^= flip
    reader = gzip.GzipFile(fileobj=io.BytesIO(bytes(packed)), mode="rb")
    raises_only(lambda: _read_layer(reader, len(data) * 2 + 1024, False), LayerError)


# ---------------------------------------------------------------------------------------------
# key files

KEY = keys.generate()
PUB_PEM = keys.public_pem(KEY)
_, _, PUB_DER = keyfile.pem_block(PUB_PEM, "k.pub")
BOX_KEY = b"k" * keyfile.BOX_KEY_SIZE
SEALED_DOC = {
    "kdf": {"name": "scrypt", "params": {"N": 32768, "r": 8, "p": 1},
            "salt": base64.b64encode(b"s" * 32).decode()},
    "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(b"n" * 24).decode()},
    "ciphertext": base64.b64encode(b"c" * 40).decode(),
}
PKCS8_DER = KEY.private_bytes(serialization.Encoding.DER,
                              serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
PEM_TYPES = st.sampled_from([*keyfile.ENCRYPTED_PEM_TYPES, "PUBLIC KEY", "PRIVATE KEY",
                             "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY", "RSA PRIVATE KEY",
                             "CERTIFICATE", ""])


def _mutate_bytes(data: bytes) -> st.SearchStrategy[bytes]:
    positions = st.lists(st.tuples(st.integers(0, max(0, len(data) - 1)),
                                   st.integers(0, 255)), min_size=1, max_size=3)

    def apply(changes: list[tuple[int, int]]) -> bytes:
        out = bytearray(data)
        for at, value in changes:
            out[at] = value
        return bytes(out)

    return st.one_of(positions.map(apply),
                     st.integers(0, len(data)).map(lambda n: data[:n]))


pem_files = st.one_of(
    st.tuples(PEM_TYPES, st.one_of(_mutate_bytes(PUB_DER), st.binary(max_size=100),
                                   mutated(SEALED_DOC).map(_dumps), hostile_bytes))
    .map(lambda t: keyfile.pem_encode(t[0], t[1]) if t[1] else b"-----BEGIN %s-----\n"
         b"-----END %s-----\n" % (t[0].encode(), t[0].encode())),
    _mutate_bytes(PUB_PEM),
    st.binary(max_size=200),
    st.sampled_from([b"-----BEGIN -----\n", b"-----BEGIN X-----\nProc-Type: 4\n\nAAAA\n"
                     b"-----END X-----\n", b"-----BEGIN \xff-----\n"]),
)


@given(pem_files)
def test_public_key_files(data: bytes) -> None:
    raises_only(lambda: keys.load_public_key(data, "k.pub"), keyfile.KeyFileError)


@given(pem_files)
def test_private_key_files_without_passphrase(data: bytes) -> None:
    raises_only(lambda: keys.load_private_key(data, None, "k.key"), keyfile.KeyFileError,
                keyfile.PassphraseError)


@given(json_inputs(SEALED_DOC))
def test_encrypted_key_body(body: bytes) -> None:
    raises_only(lambda: keyfile.parse_sealed(body, "k.key"), keyfile.KeyFileError)


@given(st.one_of(_mutate_bytes(PKCS8_DER), st.binary(max_size=200)))
def test_decrypted_key_contents(plain: bytes) -> None:
    """What the secretbox opens to is DER from the key file: it may be anything."""
    import nacl.secret

    nonce = b"n" * keyfile.NONCE_SIZE
    sealed = keyfile.Sealed(b"s", 32768, 8, 1, nonce,
                            nacl.secret.SecretBox(BOX_KEY).encrypt(plain, nonce).ciphertext)
    raises_only(lambda: keys.open_sealed(sealed, BOX_KEY, "k.key"), keyfile.KeyFileError)


# ---------------------------------------------------------------------------------------------
# signature payloads and DSSE envelopes

VALID_PAYLOAD = json.loads(payload.make_payload("reg.example/os/node:1", DIGEST, "nestbuild",
                                                1_700_000_000, annotations={"a": "b"}))


@given(json_inputs(VALID_PAYLOAD))
def test_signature_payload(data: bytes) -> None:
    raises_only(lambda: payload.parse_payload(data), payload.PayloadError)


STATEMENT = json.loads(dsse.statement("reg.example/os/node", DIGEST, "https://x.example/p",
                                      {"ok": True}))


@given(st.one_of(json_inputs(json.loads(dsse.envelope(KEY, json.dumps(STATEMENT).encode()))),
                 json_inputs(STATEMENT).map(lambda body: dsse.envelope(KEY, body))))
def test_dsse_envelope(data: bytes) -> None:
    """Broken envelopes, and well signed envelopes around broken statements (the signature
    verifies, so the statement checks run)."""
    raises_only(lambda: dsse.open_envelope(data, KEY.public_key()), dsse.EnvelopeError)


# ---------------------------------------------------------------------------------------------
# policy files, nestbuild.yaml, Containerfiles


VALID_POLICY = {"extends": "packages", "allow": ["/opt/app/**"], "deny": ["/etc/shadow"],
                "rules": {"var-content": "error", "setuid": "warning"}}
VALID_SETTINGS = {"image": "localhost/node:1", "containerfile": "Containerfile",
                  "engine": "buildah", "build-args": {"A": "1"}, "labels": {"l": "v"},
                  "secrets": ["id=a,src=b"], "layers": True, "policy": VALID_POLICY,
                  "trust": {"repo": "reg.example/os", "keys": ["k.pub"]},
                  "tags": ["x"], "signing-key": "k.key", "registry": "reg.example/os"}


@contextlib.contextmanager
def _file(data: bytes, name: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        yield path


@given(yaml_inputs(VALID_POLICY))
def test_policy_file(data: bytes) -> None:
    with _file(data, "policy.yaml") as path:
        raises_only(lambda: policy.load(path), PolicyFileError)


@given(yaml_inputs(VALID_SETTINGS))
def test_project_file(data: bytes) -> None:
    """nestbuild.yaml, and the policy it names or holds (as ``validate`` resolves it)."""
    with _file(data, "nestbuild.yaml") as path:
        raises_only(lambda: settings.load(path), UsageError)
        old = os.environ.get("NESTBUILD_CONFIG")
        os.environ["NESTBUILD_CONFIG"] = str(path)
        try:
            raises_only(lambda: policy.resolve(None, None), PolicyFileError, UsageError)
        finally:
            if old is None:
                del os.environ["NESTBUILD_CONFIG"]
            else:
                os.environ["NESTBUILD_CONFIG"] = old


containerfile_lines = st.sampled_from([
    "FROM quay.io/fedora/fedora-bootc:41", "FROM --platform=linux/amd64 $BASE AS build",
    "FROM build", "FROM ${BASE:-x}", "FROM ${BASE:+y} AS", "ARG BASE=x", "ARG", "ARG =",
    "RUN --mount=type=cache,target=/x true", "COPY <<EOF /x", "# syntax=docker/dockerfile:1",
    "RUN a \\", "", "# c", "\x00", "FROM", "FROM a b", "run x", "Ünïcode x", "FROM \udcff",
])


@given(st.one_of(
    st.lists(containerfile_lines | st.text(max_size=20), max_size=8)
    .map(lambda lines: "\n".join(lines).encode("utf-8", "surrogateescape")),
    st.binary(max_size=100),
    hostile_bytes,
), st.dictionaries(st.sampled_from(["BASE", "X"]), st.text(max_size=5), max_size=2))
def test_containerfile(data: bytes, build_args: dict[str, str]) -> None:
    def parse() -> None:
        cf = containerfile.parse(path, build_args)
        cf.final_base()

    with _file(data, "Containerfile") as path:
        raises_only(parse, UsageError)


# ---------------------------------------------------------------------------------------------
# node trust: policy.json, registries.d, trust: in nestbuild.yaml


NODE_POLICY = {
    "default": [{"type": "reject"}],
    "transports": {"docker": {
        "reg.example/os": [{"type": "sigstoreSigned", "keyPath": "/etc/pki/k.pub",
                            "signedIdentity": {"type": "matchRepository"}}],
        "reg.example": [{"type": "sigstoreSigned",
                         "keyData": base64.b64encode(PUB_PEM).decode(),
                         "keyDatas": [base64.b64encode(PUB_PEM).decode()],
                         "keyPaths": ["/etc/pki/k.pub"]}],
        "": [{"type": "insecureAcceptAnything"}],
    }},
}
REGISTRIES_D = {"default-docker": {"use-sigstore-attachments": True},
                "docker": {"reg.example/os": {"use-sigstore-attachments": True}}}


@pytest.fixture(scope="module")
def empty_layout(tmp_path_factory: pytest.TempPathFactory) -> LayoutStore:
    root = tmp_path_factory.mktemp("layout")
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (root / "index.json").write_text('{"schemaVersion": 2, "manifests": []}')
    (root / "blobs" / "sha256").mkdir(parents=True)
    return LayoutStore(root)


def _node_root(tmp: Path, policy_json: bytes, registries: bytes) -> Path:
    (tmp / trust.REGISTRIES_D).mkdir(parents=True)
    (tmp / trust.POLICY).write_bytes(policy_json)
    (tmp / trust.REGISTRIES_D / "a.yaml").write_bytes(registries)
    (tmp / "etc/pki").mkdir(parents=True)
    (tmp / "etc/pki/k.pub").write_bytes(PUB_PEM)
    return tmp


@given(json_inputs(NODE_POLICY), yaml_inputs(REGISTRIES_D))
def test_node_policy(empty_layout: LayoutStore, policy_json: bytes, registries: bytes) -> None:
    image = registry_reference.parse("docker://reg.example/os/node@" + DIGEST)
    with tempfile.TemporaryDirectory() as tmp:
        root = _node_root(Path(tmp), policy_json, registries)
        raises_only(lambda: nodepolicy.check(image, root, empty_layout), NestbuildError)
        raises_only(lambda: nodepolicy.sigstore_attachments_enabled(root, image.name),
                    UsageError)
        raises_only(lambda: trust.policy_for("reg.example/os", ["/k.pub"],
                                             trust.read_existing_policy(root)), UsageError)


@given(yaml_inputs({"trust": VALID_SETTINGS["trust"]}), json_inputs({"auths": {}}))
def test_trust_settings(data: bytes, auth_json: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "k.pub").write_bytes(PUB_PEM)
        (Path(tmp) / "auth.json").write_bytes(auth_json)
        path = Path(tmp) / "nestbuild.yaml"
        path.write_bytes(data)

        def load() -> None:
            project = settings.load(path)
            node = project.nodes.get("trust")
            if node is not None:
                found = trust.from_node(node, str(path))
                found.authfile = Path(tmp) / "auth.json"
                found.files()

        raises_only(load, UsageError)


# ---------------------------------------------------------------------------------------------
# registry credentials and responses

AUTH_JSON = {
    "auths": {"reg.example": {"auth": base64.b64encode(b"u:p").decode()},
              "reg.example/os": {"identitytoken": "t"}},
    "credHelpers": {"other.example": "nestbuild-test-absent"},
    "credsStore": "nestbuild-test-absent",
}
#: Helper names: never one that exists (the test must not run programs), but hostile ones.
helper_names = st.sampled_from(["nestbuild-test-absent", "a/b", "../x", "a\x00b", "", " "])


@given(json_inputs(AUTH_JSON), helper_names,
       st.sampled_from(["reg.example", "other.example", "docker.io"]))
def test_auth_file(data: bytes, helper: str, host: str) -> None:
    doc = None
    with contextlib.suppress(ValueError, RecursionError):
        doc = json.loads(data)
    if isinstance(doc, dict):  # helper names only from helper_names: never a real program
        if isinstance(doc.get("credHelpers"), dict):
            doc["credHelpers"] = {k: helper if isinstance(v, str) else v
                                  for k, v in doc["credHelpers"].items()}
        if isinstance(doc.get("credsStore"), str):
            doc["credsStore"] = helper
        data = _dumps(doc)
    with _file(data, "auth.json") as path:
        raises_only(lambda: auth.lookup(host, "os/node", authfile=path), UsageError)
        raises_only(lambda: auth.store("reg.example", "u", "p", authfile=path), UsageError)
        raises_only(lambda: auth.remove("reg.example", authfile=path), UsageError)


VALID_ERRORS = {"errors": [{"code": "DENIED", "message": "no", "detail": {}}]}
VALID_TOKEN = {"token": "abc", "access_token": "abc", "expires_in": 300}


@given(json_inputs(VALID_ERRORS))
def test_registry_error_body(body: bytes) -> None:
    text = client._error_text(body)
    assert isinstance(text, str) and "\n" not in text


@given(json_inputs(VALID_TOKEN))
def test_token_body(body: bytes) -> None:
    def read() -> None:
        token = client._token_from(body, "reg.example")
        assert token and token.isprintable() and " " not in token

    raises_only(read, client.AuthError)


@given(st.one_of(
    st.text(max_size=60),
    st.lists(st.sampled_from(['Bearer ', 'Basic ', 'realm=', '"https://a/t"', ',', 'scope=',
                              '"repository:x:pull"', 'service=', '"', '=', ' ', '\x00',
                              'error="invalid_token"']), max_size=10).map("".join),
))
def test_www_authenticate(header: str) -> None:
    scheme, params = client._parse_challenge(header)
    assert isinstance(scheme, str)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.items())


@given(json_inputs({"name": "os/node", "tags": ["1", "latest"]}))
def test_tag_list_body(body: bytes) -> None:
    raises_only(lambda: client._tag_list(body, "reg.example/os/node"), client.RegistryError)


INDEX = {"schemaVersion": 2, "mediaType": model.OCI_INDEX, "manifests": [
    {"mediaType": model.OCI_MANIFEST, "digest": DIGEST, "size": 500,
     "platform": {"os": "linux", "architecture": "amd64"},
     "annotations": {"org.opencontainers.image.ref.name": "1"}},
    {"mediaType": model.OCI_MANIFEST, "digest": OTHER_DIGEST, "size": 5,
     "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
]}


@given(json_inputs(INDEX))
def test_referrers_body(body: bytes) -> None:
    raises_only(lambda: client._index_entries(body, "reg.example/os/node"),
                client.RegistryError)


# ---------------------------------------------------------------------------------------------
# manifests, indexes and configs

MANIFEST = {"schemaVersion": 2, "mediaType": model.OCI_MANIFEST,
            "config": {"mediaType": model.OCI_CONFIG, "digest": DIGEST, "size": 10},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": OTHER_DIGEST, "size": 20, "annotations": {"a": "b"}}],
            "annotations": {model.ANNOTATION_BASE_DIGEST: DIGEST}}
CONFIG = {"architecture": "amd64", "os": "linux",
          "config": {"Labels": {model.LABEL_BOOTC: "1"}},
          "rootfs": {"type": "layers", "diff_ids": [DIGEST]}}


def _check_descriptor(d: model.Descriptor) -> None:
    assert isinstance(d.digest, str) and isinstance(d.size, int) and isinstance(d.media_type, str)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in d.annotations.items())


@given(json_inputs(MANIFEST))
def test_manifest(raw: bytes) -> None:
    def parse() -> None:
        m = model.Manifest.parse(raw, DIGEST, "m")
        for d in (m.config, *m.layers):
            _check_descriptor(d)
        assert all(isinstance(v, str) for v in m.annotations.values())

    raises_only(parse, ImageError)


@given(json_inputs(CONFIG))
def test_image_config(raw: bytes) -> None:
    def parse() -> None:
        c = model.ImageConfig.parse(raw, "c")
        assert isinstance(c.bootable, bool)

    raises_only(parse, ImageError)


@given(json_inputs(INDEX), st.sampled_from([("linux", "amd64"), ("linux", "s390x"), None]))
def test_index_platform(raw: bytes, platform: tuple[str, str] | None) -> None:
    raises_only(lambda: _check_descriptor(model.pick_platform(raw, "i", platform)), ImageError)


@given(mutated(MANIFEST["layers"][0]) | json_values)  # type: ignore[index]
def test_descriptor(obj: Any) -> None:
    raises_only(lambda: _check_descriptor(model.Descriptor.parse(obj, "d")), ImageError)


# ---------------------------------------------------------------------------------------------
# attachment manifests (.sig / .att) in a store


SIG_MANIFEST = {
    "schemaVersion": 2, "mediaType": model.OCI_MANIFEST,
    "config": {"mediaType": model.OCI_CONFIG, "digest": DIGEST, "size": 2},
    "layers": [{"mediaType": signing.SIMPLESIGNING_TYPE, "digest": OTHER_DIGEST, "size": 20,
                "annotations": {signing.SIGNATURE_ANNOTATION: "AAAA"}}],
}


@given(json_inputs(SIG_MANIFEST), json_inputs(CONFIG),
       st.sampled_from([model.OCI_MANIFEST, model.DOCKER_MANIFEST, "", "x"]))
def test_attachment_manifest(raw: bytes, config: bytes, media_type: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "index.json").write_text('{"schemaVersion": 2, "manifests": []}')
        store = LayoutStore(root)
        config_digest = model.digest_of(config)
        if b'"digest"' in raw:
            raw = raw.replace(DIGEST.encode(), config_digest.encode())
        store.put_blob("", config, config_digest, len(config))
        store.put_manifest("", signing.attachment_tag(DIGEST, "sig"), raw, media_type)
        target = signing.Target(store, "", DIGEST, "oci:x", None, "x")
        raises_only(lambda: signing.read_attachment(target, DIGEST, "sig"), NestbuildError)


def test_profiles_are_registered() -> None:
    """The documented profiles exist; the CI one is reproducible and keeps no database."""
    from hypothesis import settings as hsettings

    ci = hsettings.get_profile("ci")
    assert ci.derandomize and ci.database is None and ci.deadline is None
    assert hsettings.get_profile("long").max_examples > ci.max_examples


@given(st.text(max_size=30) | st.sampled_from(["0-99", "0-0", "0-²", "0-" + "9" * 5000]))
def test_upload_range_and_retry_after(value: str) -> None:
    offset = client._range_next(value)
    assert isinstance(offset, int) and offset >= 0
    registry = client.RegistryClient("127.0.0.1:9", retries=0)
    try:
        assert 0 <= registry._delay(1, value) <= 30
    finally:
        registry.close()


PAYLOAD_BODY = payload.make_payload("reg.example/os/node", DIGEST)


def _signed_store(root: Path, image: bytes, sig_manifest: Any, att_manifest: Any) -> LayoutStore:
    """A layout holding ``image`` (any bytes, named by its digest) and .sig and .att
    attachments for it whose descriptors name real blobs: a payload signed by KEY, a DSSE
    envelope by KEY. The attachment manifests are given as documents, broken or not."""
    (root / "index.json").write_text('{"schemaVersion": 2, "manifests": []}')
    store = LayoutStore(root)
    image_digest = model.digest_of(image)
    store.put_blob("", image, image_digest, len(image))
    body = payload.make_payload("reg.example/os/node", image_digest)
    envelope = dsse.envelope(KEY, dsse.statement("reg.example/os/node", image_digest,
                                                 "https://x.example/p", {}))
    for blob in (body, envelope, b"{}"):
        store.put_blob("", blob, model.digest_of(blob), len(blob))
    real = {OTHER_DIGEST: model.digest_of(body), DIGEST: model.digest_of(b"{}"),
            "AAAA": base64.b64encode(keys.sign(KEY, body)).decode(),
            "ENVELOPE": model.digest_of(envelope)}
    for suffix, doc in (("sig", sig_manifest), ("att", att_manifest)):
        raw = _dumps(doc)
        for fake, value in real.items():
            raw = raw.replace(fake.encode(), value.encode())
        store.put_manifest("", signing.attachment_tag(image_digest, suffix), raw,
                           model.OCI_MANIFEST)
    return store


ATT_MANIFEST = {
    "schemaVersion": 2, "mediaType": model.OCI_MANIFEST,
    "config": {"mediaType": model.OCI_CONFIG, "digest": DIGEST, "size": 2},
    "layers": [{"mediaType": signing.DSSE_TYPE, "digest": "ENVELOPE", "size": 1,
                "annotations": {signing.PREDICATE_TYPE_ANNOTATION: "https://x.example/p",
                                signing.SIGNATURE_ANNOTATION: ""}}],
}


@given(st.one_of(st.just(MANIFEST), mutated(INDEX)).map(_dumps),
       mutated(SIG_MANIFEST), mutated(ATT_MANIFEST))
def test_verify_reads_only_what_it_checked(image: bytes, sig: Any, att: Any) -> None:
    """``verify`` over a layout whose index and attachment manifests are broken: a report
    (that serializes) or a one-line error."""
    with tempfile.TemporaryDirectory() as tmp:
        store = _signed_store(Path(tmp), image, sig, att)
        digest = model.digest_of(image)
        target = signing.Target(store, "", digest, "oci:x",
                                registry_reference.parse_normalized("reg.example/os/node"), "x")

        def verify() -> None:
            report = signing.verify(target, [("k.pub", KEY.public_key())])
            json.dumps(report.to_json())

        raises_only(verify, NestbuildError)


# ---------------------------------------------------------------------------------------------
# what these properties found, kept as plain regressions


def _header(name: bytes, typ: bytes, size: bytes) -> bytes:
    block = bytearray(512)
    block[0:len(name)] = name
    block[100:108] = _octal(0o644, 8)
    block[124:136] = size
    block[156:157] = typ
    return _checksummed(block)


def test_a_negative_size_does_not_send_the_tar_reader_back() -> None:
    """A directory whose base-256 size is -512 pointed the next header at itself: the reader
    read the same header for ever (validate and deploy never ended)."""
    data = _header(b"d/", b"5", _base256(-512, 12)) + bytes(1024)
    with pytest.raises(LayerError, match="a negative number"):
        list(tarstream.TarStream(io.BytesIO(data), seekable=True, what="layer"))


@pytest.mark.parametrize("record, message", [
    (_pax_record(b"size", b"abc"), "corrupt PAX header (size='abc')"),
    (_pax_record(b"uid", b"-1"), "corrupt PAX header (uid='-1')"),
    (_pax_record(b"gid", b"9" * 5000), "corrupt PAX header (gid='99999"),
    (_pax_record(b"path", b"etc/\0x"), "corrupt PAX header (a NUL in path)"),
])
def test_pax_numbers_and_paths(record: bytes, message: str) -> None:
    """PAX values were given to int() as they came (a ValueError); a NUL in a path went on."""
    data = (_header(b"pax", b"x", _octal(len(record), 12)) + record
            + bytes(-len(record) % 512) + _header(b"f", b"0", _octal(0, 12)) + bytes(1024))
    with pytest.raises(LayerError) as info:
        list(tarstream.TarStream(io.BytesIO(data), seekable=False, what="layer"))
    assert info.value.message.startswith(f"layer: {message}"), info.value.message


def test_content_after_a_header_only_entry_is_refused() -> None:
    """A directory with a size: Go's archive/tar (containers/storage) and Python's tarfile
    read no content after it, nestbuild skipped ``size`` bytes, so an entry hidden there was
    never validated but applied by the other reader."""
    hidden = _header(b"usr/bin/evil", b"0", _octal(0, 12))
    data = _header(b"usr/", b"5", _octal(512, 12)) + hidden + bytes(1024)
    with tarfile.open(fileobj=io.BytesIO(data)) as python_reader:
        assert [m.name for m in python_reader] == ["usr", "usr/bin/evil"]
    with pytest.raises(LayerError, match="usr/ is a type '5' entry with 512 bytes"):
        list(tarstream.TarStream(io.BytesIO(data), seekable=True, what="layer"))


def test_a_special_record_is_not_read_past_its_limit() -> None:
    """A PAX header or long name is read whole: one claiming 2^80 bytes was handed to read()."""
    data = _header(b"pax", b"x", _base256(1 << 80, 12)) + bytes(1024)
    with pytest.raises(LayerError, match="corrupt tar"):
        list(tarstream.TarStream(io.BytesIO(data), seekable=False, what="layer"))


def test_a_descriptor_digest_is_hex() -> None:
    """Only the length and prefix were checked: a digest of the right length with '/' and '..'
    in it named a file outside an OCI layout's blobs directory."""
    digest = "sha256:" + ("../" * 30 + "etc/passwd").rjust(64, ".")[-64:]
    with pytest.raises(ImageError, match="unsupported digest"):
        model.Descriptor.parse({"digest": digest, "size": 1}, "d")
    with pytest.raises(ImageError, match="size is not a non-negative integer"):
        model.Descriptor.parse({"digest": DIGEST, "size": float("inf")}, "d")


def test_verify_refuses_an_index_entry_whose_platform_is_not_an_object(tmp_path: Path) -> None:
    index = copy.deepcopy(INDEX)
    index["manifests"][0]["platform"] = ["linux", "amd64"]
    store = _signed_store(tmp_path, _dumps(index), SIG_MANIFEST, ATT_MANIFEST)
    target = signing.Target(store, "", model.digest_of(_dumps(index)), "oci:x", None, "x")
    with pytest.raises(ImageError, match="oci:x: the index has a malformed entry"):
        signing.verify(target, [("k.pub", KEY.public_key())])


@pytest.mark.parametrize("body, problem", [
    (b'{"token": null}', "no token"), (b'{"token": "a\\r\\nX-Evil: 1"}', "no token"),
    (b"[" * 5000, "no token"), (b'{"access_token": 5}', "no token"),
])
def test_token_answers(body: bytes, problem: str) -> None:
    """A missing token became the string "None", sent as ``Bearer None``; one with a line
    break would have gone into a request header."""
    with pytest.raises(client.AuthError, match=problem):
        client._token_from(body, "reg.example")


def test_the_executable_refuses_a_containerfile_that_is_not_utf8(tmp_path: Path) -> None:
    """``nestbuild build`` with a Containerfile in Latin-1 (and a nestbuild.yaml with a
    control character): exit 2, one line naming file and line, no traceback."""
    import subprocess
    import sys

    (tmp_path / "Containerfile").write_bytes(b"FROM localhost/base\n# caf\xe9\nRUN true\n")
    r = subprocess.run([sys.executable, "-m", "nestbuild", "build", str(tmp_path)],
                       capture_output=True, text=True, cwd=tmp_path, check=False)
    assert (r.returncode, r.stderr) == (
        2, f"error: {tmp_path}/Containerfile:2: not UTF-8 text (byte 0xe9)\n")
    (tmp_path / "nestbuild.yaml").write_bytes(b"image: localhost/node\x0c\n")
    r = subprocess.run([sys.executable, "-m", "nestbuild", "build", str(tmp_path)],
                       capture_output=True, text=True, cwd=tmp_path, check=False)
    assert (r.returncode, r.stderr) == (
        2, f"error: {tmp_path}/nestbuild.yaml:1: invalid YAML: control character U+000C is "
           "not allowed\n")
