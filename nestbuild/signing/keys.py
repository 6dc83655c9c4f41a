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
import contextlib
import json
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

# The formats without the cryptography (PEM, the envelope, scrypt, passphrases, their errors)
# are signing.keyfile's, cheap to import, so signing can start scrypt before loading
# cryptography; import those names from there.
from nestbuild.signing.keyfile import (
    COSIGN_PEM_TYPE,
    ENCRYPTED_PEM_TYPES,
    NONCE_SIZE,
    SALT_SIZE,
    SCRYPT_N,
    SCRYPT_P,
    SCRYPT_R,
    KeyFileError,
    PassphraseError,
    Sealed,
    WrongPassphraseError,
    parse_sealed,
    pem_block,
    pem_encode,
    scrypt,
    secretbox_open,
    secretbox_seal,
)

PrivateKey = ec.EllipticCurvePrivateKey
PublicKey = ec.EllipticCurvePublicKey

#: PKCS#8 DER of an ECDSA P-256 key as cosign (Go's ``x509.MarshalPKCS8PrivateKey``) and
#: OpenSSL write it: this head, the 32-byte private scalar, this middle, the 64-byte point.
_P256_PKCS8_HEAD = bytes.fromhex(
    "308187020100301306072a8648ce3d020106082a8648ce3d030107046d306b0201010420")
_P256_PKCS8_MIDDLE = bytes.fromhex("a14403420004")
#: SubjectPublicKeyInfo DER of a P-256 key, up to the 64-byte uncompressed point.
_P256_SPKI_HEAD = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d03010703420004")

_KEY_SUFFIX = ".key"
_PUB_SUFFIX = ".pub"


# ---------------------------------------------------------------------------------------------
# keys and signatures


def generate() -> PrivateKey:
    """A new ECDSA P-256 key: cosign's default algorithm, the one every verifier supports."""
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: PrivateKey | PublicKey) -> bytes:
    """The ``cosign.pub`` form: PEM ``PUBLIC KEY`` (PKIX), byte-identical to cosign's."""
    from cryptography.hazmat.primitives import serialization

    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_der(key: PrivateKey | PublicKey) -> bytes:
    """The public key's SubjectPublicKeyInfo DER (what :func:`public_pem` wraps).

    A P-256 key's is a fixed head and its point: ``nestbuild sign`` names its key this way
    without importing cryptography's serialization package (its SSH formats: ~5 ms).
    """
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    if isinstance(pub.curve, ec.SECP256R1):
        numbers = pub.public_numbers()
        return _P256_SPKI_HEAD + numbers.x.to_bytes(32, "big") + numbers.y.to_bytes(32, "big")
    from cryptography.hazmat.primitives import serialization

    return pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def sign(key: PrivateKey, data: bytes) -> bytes:
    """ASN.1 DER ECDSA-P256-SHA256 signature of ``data``, what cosign puts in its annotation."""
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def warm_up() -> None:
    """Pay OpenSSL's one-time cost of a first ECDSA signature (~5 ms: providers, the random
    generator) early, in whichever thread is idle first, rather than at the real signature."""
    global _warm
    if not _warm:
        _warm = True
        ec.generate_private_key(ec.SECP256R1()).sign(b"", ec.ECDSA(hashes.SHA256()))


_warm = False


def verify(pub: PublicKey, data: bytes, sig: bytes) -> bool:
    """True if ``sig`` (ASN.1 DER) is ``pub``'s ECDSA-SHA256 signature of exactly ``data``."""
    try:
        pub.verify(sig, data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


# ---------------------------------------------------------------------------------------------
# the go-securesystemslib "encrypted" document


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encrypt_private_key(key: PrivateKey, passphrase: bytes) -> bytes:
    """The encrypted ``.key`` file cosign and containers/image (old and new) all read.

    Uses the older PEM type and scrypt N=2^15, which the widest range of readers accept.
    """
    from cryptography.hazmat.primitives import serialization

    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    salt = secrets.token_bytes(SALT_SIZE)
    nonce = secrets.token_bytes(NONCE_SIZE)
    sealed = secretbox_seal(scrypt(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P), nonce, der)
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
    return pem_encode(COSIGN_PEM_TYPE, body)


def open_sealed(sealed: Sealed, box_key: bytes, source: str) -> PrivateKey:
    """The private key in a checked envelope, given the key scrypt derived for it."""
    plain = secretbox_open(box_key, sealed.nonce, sealed.ciphertext)
    if plain is None:
        # The Poly1305 tag cannot tell a wrong passphrase from altered bytes; the first is
        # by far the likelier, and a file altered in a way that keeps valid JSON is rare.
        raise WrongPassphraseError(f"wrong passphrase for {source}")
    return _p256_pkcs8(plain) or _as_private(
        _load_der_private(plain, source, "the decrypted key"), source)


def _p256_pkcs8(der: bytes) -> PrivateKey | None:
    """The key of a P-256 PKCS#8 document laid out exactly as cosign and OpenSSL write it,
    read without cryptography's serialization package (~5 ms of every ``sign``, spent after
    scrypt, while the registry waits); None for anything else, which the full parser reads.

    The scalar must be in range and the point stored with it must be the scalar's: a document
    that does not hold together is left to the full parser to accept or refuse, as before.
    """
    head, middle = _P256_PKCS8_HEAD, _P256_PKCS8_MIDDLE
    point_at = len(head) + 32 + len(middle)
    if len(der) != point_at + 64 or not der.startswith(head) \
            or der[len(head) + 32 : point_at] != middle:
        return None
    try:
        key = ec.derive_private_key(int.from_bytes(der[len(head) : len(head) + 32], "big"),
                                    ec.SECP256R1())
    except ValueError:  # 0 or past the group order
        return None
    numbers = key.public_key().public_numbers()
    if numbers.x.to_bytes(32, "big") + numbers.y.to_bytes(32, "big") != der[point_at:]:
        return None
    return key


# ---------------------------------------------------------------------------------------------
# loading


def _describe(key: object) -> str | None:
    """A refusal for keys that are not ECDSA P-256, naming what the key is."""
    tail = "; nestbuild signs with ECDSA P-256 keys (cosign's default)"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return None
        return f"an ECDSA key on curve {key.curve.name}" + tail
    # only to name what is refused: not imported by a signature (~3 ms)
    from cryptography.hazmat.primitives.asymmetric import dsa, ed448, ed25519, rsa, x448, x25519

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
    return f"a {type(key).__name__}" + tail


def _as_private(key: object, source: str) -> PrivateKey:
    problem = _describe(key)
    if problem is not None:
        raise KeyFileError(f"{source} is {problem}")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _load_der_private(der: bytes, source: str, what: str) -> object:
    from cryptography.hazmat.primitives import serialization

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
    pem_type, headers, der = pem_block(data, source)
    if pem_type in ENCRYPTED_PEM_TYPES:
        if passphrase is None:
            raise PassphraseError(
                f"{source} is encrypted: a passphrase is needed (set NESTBUILD_PASSWORD or "
                "use --passphrase-file)"
            )
        sealed = parse_sealed(der, source)
        return open_sealed(sealed, sealed.derive(passphrase), source)
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
        from cryptography.hazmat.primitives import serialization

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
    pem_type, _, der = pem_block(data, source)
    if pem_type != "PUBLIC KEY":
        hint = "; use the .pub file" if "PRIVATE KEY" in pem_type else ""
        raise KeyFileError(f"{source} is a PEM '{pem_type}', not a 'PUBLIC KEY'{hint}")
    from cryptography.hazmat.primitives import serialization

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
