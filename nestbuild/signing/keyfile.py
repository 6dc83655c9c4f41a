"""Key files without the cryptography: PEM blocks, cosign's encrypted envelope, scrypt, passphrases.

Decrypting a cosign key is mostly scrypt (N=2^15: ~100 ms), which releases the GIL. This module
imports only the standard library (and libsodium's compiled module, when a key is opened), so
``nestbuild sign`` can start the derivation in a thread (:mod:`nestbuild.signing.keyload`)
before it imports cryptography, the rest of PyNaCl and the registry client, and all of that
overlaps. :mod:`nestbuild.signing.keys` (the keys themselves) builds on it; this module never
imports that one.

The envelope is go-securesystemslib's ``encrypted`` document: the PKCS#8 DER key sealed with
NaCl secretbox (XSalsa20-Poly1305) under a key derived by scrypt from the passphrase.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sys

from nestbuild.errors import NestbuildError

TYPE_CHECKING = False  # not typing's: importing typing (or pathlib) costs scrypt's head start
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any, TypeAlias

    FilePath: TypeAlias = str | os.PathLike[str]

#: PEM type cosign wrote before 2.0; still read by every cosign and containers/image version.
COSIGN_PEM_TYPE = "ENCRYPTED COSIGN PRIVATE KEY"
#: PEM type cosign writes since 2.0; older containers/image versions do not know it.
SIGSTORE_PEM_TYPE = "ENCRYPTED SIGSTORE PRIVATE KEY"
ENCRYPTED_PEM_TYPES = (COSIGN_PEM_TYPE, SIGSTORE_PEM_TYPE)

#: go-securesystemslib's "legacy" strength, the only one older readers accept.
SCRYPT_N = 1 << 15
SCRYPT_R = 8
SCRYPT_P = 1
#: The (N, r, p) triples go-securesystemslib accepts; anything else could be a DoS.
SCRYPT_ACCEPTED = {(1 << 15, 8, 1), (1 << 16, 8, 1), (1 << 17, 8, 1)}
SALT_SIZE = 32
#: NaCl secretbox's sizes (libsodium's crypto_secretbox_NONCEBYTES, KEYBYTES, MACBYTES).
NONCE_SIZE = 24
BOX_KEY_SIZE = 32
MAC_SIZE = 16

PASSPHRASE_ENV = ("NESTBUILD_PASSWORD", "COSIGN_PASSWORD")


class KeyFileError(NestbuildError):
    """A key file that cannot be used: corrupt, truncated, or of an unsupported kind."""


class WrongPassphraseError(KeyFileError):
    """The passphrase does not open the key (or the sealed key was altered)."""


class PassphraseError(NestbuildError):
    """No passphrase could be obtained, or the two typed ones differ."""


# ---------------------------------------------------------------------------------------------
# PEM


def pem_block(data: bytes, source: str) -> tuple[str, dict[str, str], bytes]:
    """The first PEM block in ``data`` as (type, headers, DER), like Go's ``pem.Decode``.

    Text before the block is ignored, as Go does; a block without its END line is truncated.
    """
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"{source} is not a PEM file (binary data)") from None
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("-----BEGIN ")), None)
    if start is None:
        raise KeyFileError(f"{source} is not a PEM file (no -----BEGIN line)")
    begin = lines[start].strip()
    if not begin.endswith("-----") or len(begin) <= len("-----BEGIN ") + len("-----"):
        raise KeyFileError(f"{source} has a malformed PEM BEGIN line")
    pem_type = begin[len("-----BEGIN ") : -len("-----")]
    end_line = f"-----END {pem_type}-----"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].strip() == end_line), None)
    if end is None:
        raise KeyFileError(f"{source} is truncated: no '{end_line}' line")
    body = [line.strip() for line in lines[start + 1 : end]]
    headers: dict[str, str] = {}
    while body and ":" in body[0]:
        name, _, value = body.pop(0).partition(":")
        headers[name.strip()] = value.strip()
    if headers and body and body[0] == "":
        body.pop(0)
    try:
        der = base64.b64decode("".join(body), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{source} is corrupt: bad base64 in the PEM body") from None
    if not der:
        raise KeyFileError(f"{source} is corrupt: empty PEM body")
    return pem_type, headers, der


def pem_encode(pem_type: str, der: bytes) -> bytes:
    """PEM with 64-column lines, as Go's ``pem.EncodeToMemory`` writes it."""
    b64 = base64.b64encode(der).decode("ascii")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return (
        f"-----BEGIN {pem_type}-----\n"
        + "".join(x + "\n" for x in lines)
        + f"-----END {pem_type}-----\n"
    ).encode("ascii")


# ---------------------------------------------------------------------------------------------
# the go-securesystemslib "encrypted" document


def _sodium() -> tuple[Any, Any]:
    """libsodium, through the compiled module PyNaCl ships (``ffi``, ``lib``).

    That module alone costs ~1.5 ms to import; ``nacl.bindings``, which ``nacl.secret`` loads,
    ~17 ms, holding the GIL while ``sign`` has little time to spare: scrypt waits for the
    import, and the threads that prepare the signature wait for each other's."""
    from nacl._sodium import ffi, lib

    if lib.sodium_init() < 0:  # picks the vectorised implementations; safe to call again
        raise KeyFileError("libsodium could not be initialised")
    return ffi, lib


def scrypt(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    """The secretbox key, by libsodium's scrypt: ~20% faster here than OpenSSL's
    (cryptography's or hashlib's), and the call releases the GIL (cffi). N, r and p are
    checked by :func:`parse_sealed` (or are ours)."""
    ffi, lib = _sodium()
    out = ffi.new("uint8_t[]", BOX_KEY_SIZE)
    if lib.crypto_pwhash_scryptsalsa208sha256_ll(passphrase, len(passphrase), salt, len(salt),
                                                  n, r, p, out, BOX_KEY_SIZE) != 0:
        raise KeyFileError(f"scrypt failed (N={n}, r={r}, p={p}): out of memory")
    return bytes(ffi.buffer(out))


def secretbox_seal(key: bytes, nonce: bytes, plain: bytes) -> bytes:
    """NaCl secretbox (XSalsa20-Poly1305): the Poly1305 tag, then the ciphertext, as Go's
    ``secretbox.Seal`` lays it out (and PyNaCl's ``SecretBox.encrypt(...).ciphertext``)."""
    _check_box(key, nonce)
    ffi, lib = _sodium()
    out = ffi.new("unsigned char[]", MAC_SIZE + len(plain))
    if lib.crypto_secretbox_easy(out, plain, len(plain), nonce, key) != 0:
        raise KeyFileError("secretbox could not seal the key")
    return bytes(ffi.buffer(out))


def secretbox_open(key: bytes, nonce: bytes, sealed: bytes) -> bytes | None:
    """What :func:`secretbox_seal` sealed; None when the tag does not verify (a wrong key,
    or altered bytes: the two cannot be told apart)."""
    _check_box(key, nonce)
    if len(sealed) < MAC_SIZE:
        return None
    ffi, lib = _sodium()
    out = ffi.new("unsigned char[]", max(1, len(sealed) - MAC_SIZE))
    if lib.crypto_secretbox_open_easy(out, sealed, len(sealed), nonce, key) != 0:
        return None
    return bytes(ffi.buffer(out, len(sealed) - MAC_SIZE))


def _check_box(key: bytes, nonce: bytes) -> None:
    # libsodium reads exactly this many bytes from each pointer, whatever it is given
    if len(key) != BOX_KEY_SIZE or len(nonce) != NONCE_SIZE:
        raise ValueError(f"secretbox takes a {BOX_KEY_SIZE}-byte key and a "
                         f"{NONCE_SIZE}-byte nonce")


class Sealed:
    """An encrypted key's envelope, checked: what to derive the key with, and what to open.

    A plain class, not a dataclass: ``dataclasses`` (with ``inspect``) costs ~6 ms, and this
    module runs before the scrypt thread starts."""

    __slots__ = ("ciphertext", "n", "nonce", "p", "r", "salt")

    def __init__(self, salt: bytes, n: int, r: int, p: int, nonce: bytes,
                 ciphertext: bytes) -> None:
        self.salt, self.n, self.r, self.p = salt, n, r, p
        self.nonce, self.ciphertext = nonce, ciphertext

    def derive(self, passphrase: bytes) -> bytes:
        return scrypt(passphrase, self.salt, self.n, self.r, self.p)


def _field(obj: Mapping[str, Any], name: str, kind: type, source: str) -> Any:
    value = obj.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise KeyFileError(
            f"{source} is corrupt: field '{name}' is missing or not a {kind.__name__}"
        )
    return value


def _b64field(obj: Mapping[str, Any], name: str, source: str) -> bytes:
    try:
        return base64.b64decode(_field(obj, name, str, source), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{source} is corrupt: field '{name}' is not base64") from None


def _short(value: object) -> str:
    """A value from the file, for a message: JSON-like, one line, never a page long."""
    if isinstance(value, dict | list):
        return "an object" if isinstance(value, dict) else "an array"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_sealed(body: bytes, source: str) -> Sealed:
    """Read a go-securesystemslib ``encrypted`` document, checking its parameters first."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise KeyFileError(f"{source} is corrupt: the encrypted key is not valid JSON") from None
    if not isinstance(doc, dict):
        raise KeyFileError(f"{source} is corrupt: the encrypted key is not a JSON object")
    kdf = _field(doc, "kdf", dict, source)
    cipher = _field(doc, "cipher", dict, source)
    if kdf.get("name") != "scrypt":
        raise KeyFileError(
            f"{source} uses key derivation {_short(kdf.get('name'))}; only scrypt is known"
        )
    if cipher.get("name") != "nacl/secretbox":
        raise KeyFileError(
            f"{source} uses cipher {_short(cipher.get('name'))}; only nacl/secretbox is known"
        )
    params = _field(kdf, "params", dict, source)
    n, r, p = params.get("N"), params.get("r"), params.get("p")
    # Types first: a list is not hashable, and True == 1 would pass the set.
    if not all(type(v) is int for v in (n, r, p)) or (n, r, p) not in SCRYPT_ACCEPTED:
        raise KeyFileError(
            f"{source} uses scrypt parameters N={_short(n)}, r={_short(r)}, p={_short(p)}; "
            "cosign-compatible keys use N=32768, 65536 or 131072 with r=8, p=1"
        )
    salt = _b64field(kdf, "salt", source)
    nonce = _b64field(cipher, "nonce", source)
    sealed = _b64field(doc, "ciphertext", source)
    if len(nonce) != NONCE_SIZE:
        raise KeyFileError(
            f"{source} is corrupt: the nonce is {len(nonce)} bytes, not {NONCE_SIZE}"
        )
    if len(sealed) < MAC_SIZE:
        raise KeyFileError(f"{source} is corrupt: the ciphertext is truncated")
    assert isinstance(n, int) and isinstance(r, int) and isinstance(p, int)
    return Sealed(salt, n, r, p, nonce, sealed)


# ---------------------------------------------------------------------------------------------
# passphrases


def get_passphrase(
    *,
    env: Sequence[str] = PASSPHRASE_ENV,
    file: FilePath | None = None,
    prompt: bool = True,
    confirm: bool = False,
    label: str = "the private key",
) -> bytes:
    """The key passphrase: from the first set env variable, else ``file``, else a prompt.

    Never from the command line, where other users can read it in the process list. A variable
    that is set but empty means the empty passphrase, as with cosign's COSIGN_PASSWORD.
    The file's first line is used, without its line ending. The prompt is only shown when stdin
    is a terminal, since nothing could answer it in CI.
    """
    for name in env:
        value = os.environ.get(name)
        if value is not None:
            return os.fsencode(value)
    if file is not None:
        try:
            content = read_file(file)
        except OSError as exc:
            raise PassphraseError(f"cannot read passphrase file {file}: {exc.strerror}") from None
        return content.split(b"\n", 1)[0].removesuffix(b"\r")
    names = " or ".join(env) if env else "NESTBUILD_PASSWORD"
    if not prompt or not sys.stdin.isatty():
        raise PassphraseError(
            f"no passphrase for {label}: set {names} or use --passphrase-file "
            "(stdin is not a terminal, so nestbuild cannot ask)"
            if prompt
            else f"no passphrase for {label}: set {names} or use --passphrase-file"
        )
    import getpass

    try:
        first = getpass.getpass(f"Enter passphrase for {label}: ")
        if confirm:
            second = getpass.getpass(f"Enter passphrase for {label} again: ")
            if first != second:
                raise PassphraseError("the two passphrases differ")
    except (EOFError, KeyboardInterrupt):
        raise PassphraseError(f"no passphrase for {label}: the prompt was cancelled") from None
    return first.encode()


def read_file(path: FilePath) -> bytes:
    """A key or passphrase file's bytes (OSError for the caller to describe)."""
    with open(path, "rb") as f:
        return f.read()
