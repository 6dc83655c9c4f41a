"""Signing keys in the formats cosign and containers/image read and write.

A node verifies nestbuild's signatures with the same public key file cosign uses, and a user may
bring a key made by ``cosign generate-key-pair``, so keys are stored exactly as cosign stores them:

* ``X.pub``: PEM ``PUBLIC KEY`` (PKIX), ECDSA P-256.
* ``X.key``: PEM ``ENCRYPTED COSIGN PRIVATE KEY`` (or ``... SIGSTORE ...``) whose body is the
  JSON document of go-securesystemslib's ``encrypted`` package: the PKCS#8 DER key sealed with
  NaCl secretbox (XSalsa20-Poly1305) under a key derived by scrypt from the passphrase.

Signatures are ASN.1 DER ECDSA-P256-SHA256 over the exact bytes, as cosign makes them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import getpass
import hashlib
import json
import os
import secrets
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.secret
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x448, x25519

from nestbuild.errors import NestbuildError

PrivateKey = ec.EllipticCurvePrivateKey
PublicKey = ec.EllipticCurvePublicKey

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
NONCE_SIZE = nacl.secret.SecretBox.NONCE_SIZE
BOX_KEY_SIZE = nacl.secret.SecretBox.KEY_SIZE

PASSPHRASE_ENV = ("NESTBUILD_PASSWORD", "COSIGN_PASSWORD")

_KEY_SUFFIX = ".key"
_PUB_SUFFIX = ".pub"


class KeyFileError(NestbuildError):
    """A key file that cannot be used: corrupt, truncated, or of an unsupported kind."""


class WrongPassphraseError(KeyFileError):
    """The passphrase does not open the key (or the sealed key was altered)."""


class PassphraseError(NestbuildError):
    """No passphrase could be obtained, or the two typed ones differ."""


# ---------------------------------------------------------------------------------------------
# keys and signatures


def generate() -> PrivateKey:
    """A new ECDSA P-256 key: cosign's default algorithm, the one every verifier supports."""
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: PrivateKey | PublicKey) -> bytes:
    """The ``cosign.pub`` form: PEM ``PUBLIC KEY`` (PKIX), byte-identical to cosign's."""
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def sign(key: PrivateKey, data: bytes) -> bytes:
    """ASN.1 DER ECDSA-P256-SHA256 signature of ``data``, what cosign puts in its annotation."""
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def verify(pub: PublicKey, data: bytes, sig: bytes) -> bool:
    """True if ``sig`` (ASN.1 DER) is ``pub``'s ECDSA-SHA256 signature of exactly ``data``."""
    try:
        pub.verify(sig, data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


# ---------------------------------------------------------------------------------------------
# PEM


def _pem_block(data: bytes, source: str) -> tuple[str, dict[str, str], bytes]:
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


def _pem_encode(pem_type: str, der: bytes) -> bytes:
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


def _scrypt(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    # OpenSSL refuses unless maxmem covers 128*r*N (+ a little); the default is 32 MiB.
    maxmem = 128 * r * (n + p + 2) + (1 << 20)
    return hashlib.scrypt(passphrase, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=BOX_KEY_SIZE)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encrypt_private_key(key: PrivateKey, passphrase: bytes) -> bytes:
    """The encrypted ``.key`` file cosign and containers/image (old and new) all read.

    Uses the older PEM type and scrypt N=2^15, which the widest range of readers accept.
    """
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    salt = secrets.token_bytes(SALT_SIZE)
    nonce = secrets.token_bytes(NONCE_SIZE)
    box = nacl.secret.SecretBox(_scrypt(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P))
    sealed = box.encrypt(der, nonce).ciphertext  # Poly1305 tag then ciphertext, as Go's Seal
    # Field names, nesting and order as Go's encoding/json marshals go-securesystemslib's structs.
    doc = {
        "kdf": {
            "name": "scrypt",
            "params": {"N": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P},
            "salt": _b64(salt),
        },
        "cipher": {"name": "nacl/secretbox", "nonce": _b64(nonce)},
        "ciphertext": _b64(sealed),
    }
    body = json.dumps(doc, separators=(",", ":")).encode("ascii")
    return _pem_encode(COSIGN_PEM_TYPE, body)


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


def _decrypt(body: bytes, passphrase: bytes, source: str) -> bytes:
    """Open a go-securesystemslib ``encrypted`` document, checking its parameters first."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise KeyFileError(f"{source} is corrupt: the encrypted key is not valid JSON") from None
    if not isinstance(doc, dict):
        raise KeyFileError(f"{source} is corrupt: the encrypted key is not a JSON object")
    kdf = _field(doc, "kdf", dict, source)
    cipher = _field(doc, "cipher", dict, source)
    if kdf.get("name") != "scrypt":
        raise KeyFileError(
            f"{source} uses key derivation {kdf.get('name')!r}; only scrypt is known"
        )
    if cipher.get("name") != "nacl/secretbox":
        raise KeyFileError(
            f"{source} uses cipher {cipher.get('name')!r}; only nacl/secretbox is known"
        )
    params = _field(kdf, "params", dict, source)
    n, r, p = params.get("N"), params.get("r"), params.get("p")
    if (n, r, p) not in SCRYPT_ACCEPTED or not all(type(v) is int for v in (n, r, p)):
        raise KeyFileError(
            f"{source} uses scrypt parameters N={n}, r={r}, p={p}; cosign-compatible keys use "
            "N=32768, 65536 or 131072 with r=8, p=1"
        )
    salt = _b64field(kdf, "salt", source)
    nonce = _b64field(cipher, "nonce", source)
    sealed = _b64field(doc, "ciphertext", source)
    if len(nonce) != NONCE_SIZE:
        raise KeyFileError(
            f"{source} is corrupt: the nonce is {len(nonce)} bytes, not {NONCE_SIZE}"
        )
    if len(sealed) < nacl.secret.SecretBox.MACBYTES:
        raise KeyFileError(f"{source} is corrupt: the ciphertext is truncated")
    assert isinstance(n, int) and isinstance(r, int) and isinstance(p, int)
    box = nacl.secret.SecretBox(_scrypt(passphrase, salt, n, r, p))
    try:
        return box.decrypt(sealed, nonce)
    except nacl.exceptions.CryptoError:
        # The Poly1305 tag cannot tell a wrong passphrase from altered bytes; the first is
        # by far the likelier, and a file altered in a way that keeps valid JSON is rare.
        raise WrongPassphraseError(f"wrong passphrase for {source}") from None


# ---------------------------------------------------------------------------------------------
# loading


def _describe(key: object) -> str | None:
    """A refusal for keys that are not ECDSA P-256, naming what the key is."""
    tail = "; nestbuild signs with ECDSA P-256 keys (cosign's default)"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "an RSA key" + tail
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "an ed25519 key" + tail
    if isinstance(key, ed448.Ed448PrivateKey | ed448.Ed448PublicKey):
        return "an ed448 key" + tail
    if isinstance(
        key,
        x25519.X25519PrivateKey | x25519.X25519PublicKey | x448.X448PrivateKey | x448.X448PublicKey,
    ):
        return "a key-agreement (X25519/X448) key, not a signing key" + tail
    if isinstance(key, dsa.DSAPrivateKey | dsa.DSAPublicKey):
        return "a DSA key" + tail
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return None
        return f"an ECDSA key on curve {key.curve.name}" + tail
    return f"a {type(key).__name__}" + tail


def _as_private(key: object, source: str) -> PrivateKey:
    problem = _describe(key)
    if problem is not None:
        raise KeyFileError(f"{source} is {problem}")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _load_der_private(der: bytes, source: str, what: str) -> object:
    try:
        return serialization.load_der_private_key(der, password=None)
    except UnsupportedAlgorithm:
        raise KeyFileError(f"{source} holds a private key of an unsupported algorithm") from None
    except (ValueError, TypeError):
        raise KeyFileError(f"{source} is corrupt: {what} does not parse") from None


def load_private_key(data: bytes, passphrase: bytes | None, source: str) -> PrivateKey:
    """Read a private key file as cosign writes it, or a plain PEM key.

    Accepted: ``ENCRYPTED COSIGN/SIGSTORE PRIVATE KEY`` (scrypt N of 2^15..2^17), PKCS#8
    ``PRIVATE KEY``, SEC1 ``EC PRIVATE KEY`` and password-protected PKCS#8 ``ENCRYPTED PRIVATE
    KEY``. ``source`` names the file in messages. ``passphrase`` may be None for plain keys.
    """
    pem_type, headers, der = _pem_block(data, source)
    if pem_type in ENCRYPTED_PEM_TYPES:
        if passphrase is None:
            raise PassphraseError(
                f"{source} is encrypted: a passphrase is needed (set NESTBUILD_PASSWORD or "
                "use --passphrase-file)"
            )
        plain = _decrypt(der, passphrase, source)
        return _as_private(_load_der_private(plain, source, "the decrypted key"), source)
    if "Proc-Type" in headers or "DEK-Info" in headers:
        raise KeyFileError(
            f"{source} uses legacy OpenSSL PEM encryption; convert it with "
            "'openssl pkcs8 -topk8' or import it with 'cosign import-key-pair'"
        )
    if pem_type == "PRIVATE KEY":
        return _as_private(_load_der_private(der, source, "the PKCS#8 key"), source)
    if pem_type == "EC PRIVATE KEY":
        return _as_private(_load_der_private(der, source, "the EC key"), source)
    if pem_type == "ENCRYPTED PRIVATE KEY":
        if passphrase is None:
            raise PassphraseError(
                f"{source} is encrypted: a passphrase is needed (set NESTBUILD_PASSWORD or "
                "use --passphrase-file)"
            )
        try:
            key = serialization.load_der_private_key(der, password=passphrase)
        except UnsupportedAlgorithm:
            raise KeyFileError(f"{source} uses an unsupported encryption algorithm") from None
        except (ValueError, TypeError) as exc:
            if "password" in str(exc).lower() or "decrypt" in str(exc).lower():
                raise WrongPassphraseError(f"wrong passphrase for {source}") from None
            raise KeyFileError(f"{source} is corrupt: the PKCS#8 key does not parse") from None
        return _as_private(key, source)
    if pem_type == "RSA PRIVATE KEY":
        raise KeyFileError(
            f"{source} is an RSA key; nestbuild signs with ECDSA P-256 keys (cosign's default)"
        )
    if pem_type == "PUBLIC KEY":
        raise KeyFileError(f"{source} is a public key; signing needs the private key (.key)")
    raise KeyFileError(f"{source} is a PEM '{pem_type}', not a private key")


def load_public_key(data: bytes, source: str) -> PublicKey:
    """Read a ``cosign.pub``: PEM ``PUBLIC KEY``, ECDSA P-256 only (what nestbuild signs with)."""
    pem_type, _, der = _pem_block(data, source)
    if pem_type != "PUBLIC KEY":
        hint = "; use the .pub file" if "PRIVATE KEY" in pem_type else ""
        raise KeyFileError(f"{source} is a PEM '{pem_type}', not a 'PUBLIC KEY'{hint}")
    try:
        key = serialization.load_der_public_key(der)
    except UnsupportedAlgorithm:
        raise KeyFileError(f"{source} holds a public key of an unsupported algorithm") from None
    except (ValueError, TypeError):
        raise KeyFileError(f"{source} is corrupt: the public key does not parse") from None
    problem = _describe(key)
    if problem is not None:
        raise KeyFileError(f"{source} is {problem}")
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


# ---------------------------------------------------------------------------------------------
# files


def key_paths(prefix: Path) -> tuple[Path, Path]:
    """PREFIX.key and PREFIX.pub, cosign's names for a key pair."""
    return prefix.with_name(prefix.name + _KEY_SUFFIX), prefix.with_name(prefix.name + _PUB_SUFFIX)


def _create(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (never existing) with ``mode`` (less the umask) from the start, so the
    key is never readable by others, even for a moment."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
            f.flush()
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    os.close(fd)


def write_key_pair(
    prefix: Path, passphrase: bytes, force: bool = False, *, key: PrivateKey | None = None
) -> tuple[Path, Path]:
    """Write PREFIX.key (0600) and PREFIX.pub (0644 less the umask, as cosign does).

    The key is new unless ``key`` is given (to re-encrypt or import one). Never overwrites
    without ``force``; with it, both files are written beside the old ones and renamed over
    them, and the old key is put back if the .pub cannot be, so a failure leaves the old pair.
    """
    if key is None:
        key = generate()
    key_data = encrypt_private_key(key, passphrase)
    pub_data = public_pem(key)
    key_path, pub_path = key_paths(prefix)
    if not force:
        for path in (key_path, pub_path):
            if path.exists() or path.is_symlink():
                raise KeyFileError(f"{path} already exists (use --force to replace it)")
    try:
        if not force:
            _create(key_path, key_data, 0o600)
            try:
                _create(pub_path, pub_data, 0o644)
            except BaseException:
                key_path.unlink()
                raise
            return key_path, pub_path
        tag = f".tmp-{os.getpid()}-{secrets.token_hex(4)}"
        key_tmp = key_path.with_name(key_path.name + tag)
        pub_tmp = pub_path.with_name(pub_path.name + tag)
        key_old = key_path.with_name(key_path.name + tag + ".old")
        try:
            _create(key_tmp, key_data, 0o600)
            _create(pub_tmp, pub_data, 0o644)
            had_key = key_path.is_file()
            if had_key:
                os.link(key_path, key_old)  # to put the old key back if the .pub cannot go in
            os.replace(key_tmp, key_path)
            try:
                os.replace(pub_tmp, pub_path)
            except OSError:
                if had_key:
                    os.replace(key_old, key_path)
                else:
                    key_path.unlink()
                raise
        finally:
            for tmp in (key_tmp, pub_tmp, key_old):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
    except FileExistsError as exc:
        raise KeyFileError(f"{exc.filename} already exists (use --force to replace it)") from None
    except OSError as exc:
        raise KeyFileError(f"cannot write {exc.filename or key_path}: {exc.strerror}") from None
    return key_path, pub_path


# ---------------------------------------------------------------------------------------------
# passphrases


def get_passphrase(
    *,
    env: Sequence[str] = PASSPHRASE_ENV,
    file: Path | None = None,
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
            content = file.read_bytes()
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
    try:
        first = getpass.getpass(f"Enter passphrase for {label}: ")
        if confirm:
            second = getpass.getpass(f"Enter passphrase for {label} again: ")
            if first != second:
                raise PassphraseError("the two passphrases differ")
    except (EOFError, KeyboardInterrupt):
        raise PassphraseError(f"no passphrase for {label}: the prompt was cancelled") from None
    return first.encode()
