"""Key files and signatures: cosign's own vectors, every accepted variant, every refusal, and
interop with the real cosign binary in both directions."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import sys
from pathlib import Path

import nacl.secret
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from nestbuild.errors import NestbuildError
from nestbuild.signing import keyfile, keys
from tests.fixtures.common import run_in_pty
from tests.fixtures.cosign import Cosign

INTEROP = Path(__file__).parents[1] / "data" / "interop"
HELLO_KEY = INTEROP / "cosign-keys" / "sigstore-hello.key"
CI_PUB = INTEROP / "containers-image-signatures" / "cosign.pub"


def pem_body(data: bytes) -> tuple[str, bytes]:
    lines = data.decode().strip().splitlines()
    return lines[0][len("-----BEGIN ") : -5], base64.b64decode("".join(lines[1:-1]))


def pem(pem_type: str, der: bytes) -> bytes:
    b64 = base64.b64encode(der).decode()
    body = "".join(b64[i : i + 64] + "\n" for i in range(0, len(b64), 64))
    return f"-----BEGIN {pem_type}-----\n{body}-----END {pem_type}-----\n".encode()


def seal(der: bytes, passphrase: bytes, n: int, r: int = 8, p: int = 1,
         pem_type: str = keyfile.SIGSTORE_PEM_TYPE) -> bytes:
    """An encrypted key file built independently of signing.keys (for parameter variants)."""
    salt, nonce = os.urandom(32), os.urandom(24)
    box_key = hashlib.scrypt(passphrase, salt=salt, n=n, r=r, p=p, maxmem=1 << 30, dklen=32)
    ct = nacl.secret.SecretBox(box_key).encrypt(der, nonce).ciphertext
    doc = {"kdf": {"name": "scrypt", "params": {"N": n, "r": r, "p": p},
                   "salt": base64.b64encode(salt).decode()},
           "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
           "ciphertext": base64.b64encode(ct).decode()}
    return pem(pem_type, json.dumps(doc).encode())


def pkcs8(key: object) -> bytes:
    assert hasattr(key, "private_bytes")
    der: bytes = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
    return der


def message_of(exc: pytest.ExceptionInfo[NestbuildError]) -> str:
    msg = exc.value.message
    assert "\n" not in msg
    return msg


# --- scrypt ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1 << 15, 1 << 16, 1 << 17])
@pytest.mark.parametrize("passphrase", [b"", b"correct horse", "pässwörd".encode()])
def test_scrypt_derives_what_openssl_derives(n: int, passphrase: bytes) -> None:
    # libsodium's scrypt against an independent implementation (OpenSSL's, through hashlib),
    # for every N a key file may carry
    salt = os.urandom(32)
    assert keyfile.scrypt(passphrase, salt, n, 8, 1) == hashlib.scrypt(
        passphrase, salt=salt, n=n, r=8, p=1, maxmem=1 << 28, dklen=keyfile.BOX_KEY_SIZE)


@pytest.mark.parametrize("size", [0, 1, 121, 4096])
def test_secretbox_is_nacls(size: int) -> None:
    # sealed here, opened by PyNaCl, and the other way round: the layout Go's secretbox reads
    key, nonce, plain = os.urandom(32), os.urandom(24), os.urandom(size)
    sealed = keyfile.secretbox_seal(key, nonce, plain)
    assert sealed == nacl.secret.SecretBox(key).encrypt(plain, nonce).ciphertext
    assert nacl.secret.SecretBox(key).decrypt(sealed, nonce) == plain
    assert keyfile.secretbox_open(key, nonce, sealed) == plain


def test_secretbox_refuses_what_does_not_verify() -> None:
    key, nonce = os.urandom(32), os.urandom(24)
    sealed = keyfile.secretbox_seal(key, nonce, b"private key")
    altered = bytes([sealed[0] ^ 1]) + sealed[1:]
    assert keyfile.secretbox_open(os.urandom(32), nonce, sealed) is None
    assert keyfile.secretbox_open(key, nonce, altered) is None
    assert keyfile.secretbox_open(key, nonce, sealed[:15]) is None  # shorter than the tag
    with pytest.raises(ValueError, match="24-byte nonce"):
        keyfile.secretbox_open(key, nonce[:8], sealed)


# --- cosign's own vector -------------------------------------------------------------------


def test_cosign_vector_decrypts_with_its_passphrase() -> None:
    key = keys.load_private_key(HELLO_KEY.read_bytes(), b"hello", "sigstore-hello.key")
    assert isinstance(key.curve, ec.SECP256R1)
    assert keys.verify(key.public_key(), b"x", keys.sign(key, b"x"))


def test_cosign_vector_refuses_a_wrong_passphrase() -> None:
    with pytest.raises(keyfile.WrongPassphraseError) as exc:
        keys.load_private_key(HELLO_KEY.read_bytes(), b"hellO", "sigstore-hello.key")
    assert message_of(exc) == "wrong passphrase for sigstore-hello.key"
    assert exc.value.exit_code == 2


def test_public_pem_is_byte_identical_to_cosigns() -> None:
    data = CI_PUB.read_bytes()
    assert keys.public_pem(keys.load_public_key(data, "cosign.pub")) == data


def test_sealed_keys_open_to_the_same_key_by_either_reader() -> None:
    """Signing reads a P-256 PKCS#8 key in cosign's layout without cryptography's full parser;
    the key and its public DER are the parser's. A document whose point is not its scalar's,
    or a scalar out of range, goes to the full parser, which decides as before."""
    cosign_key = keys.load_private_key(HELLO_KEY.read_bytes(), b"hello", "sigstore-hello.key")
    for key in (cosign_key, ec.generate_private_key(ec.SECP256R1())):
        der = pkcs8(key)
        opened = keys.load_private_key(seal(der, b"pw", 1 << 15), b"pw", "k.key")
        assert opened.private_numbers() == key.private_numbers()
        assert keys.public_der(opened) == key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        other = pkcs8(ec.generate_private_key(ec.SECP256R1()))
        mixed = der[:-64] + other[-64:]  # our scalar, another key's point
        try:
            loaded = keys.load_private_key(seal(mixed, b"pw", 1 << 15), b"pw", "k.key")
        except keyfile.KeyFileError as exc:
            assert "is corrupt" in exc.message
        else:  # what OpenSSL makes of it, as without the shortcut
            assert loaded.private_numbers().private_value == key.private_numbers().private_value
    zero = der[:36] + bytes(32) + der[68:]
    with pytest.raises(keyfile.KeyFileError):
        keys.load_private_key(seal(zero, b"pw", 1 << 15), b"pw", "k.key")


# --- what nestbuild writes -----------------------------------------------------------------


def test_written_key_is_the_widest_compatible_variant() -> None:
    key = keys.generate()
    data = keys.encrypt_private_key(key, b"pw")
    pem_type, body = pem_body(data)
    assert pem_type == "ENCRYPTED COSIGN PRIVATE KEY"
    assert all(len(line) <= 64 for line in data.decode().splitlines())
    doc = json.loads(body)
    # Field names, nesting and order as go-securesystemslib's structs marshal.
    assert list(doc) == ["kdf", "cipher", "ciphertext"]
    assert list(doc["kdf"]) == ["name", "params", "salt"]
    assert doc["kdf"]["name"] == "scrypt"
    assert list(doc["kdf"]["params"].items()) == [("N", 32768), ("r", 8), ("p", 1)]
    assert len(base64.b64decode(doc["kdf"]["salt"])) == 32
    assert doc["cipher"]["name"] == "nacl/secretbox"
    assert len(base64.b64decode(doc["cipher"]["nonce"])) == 24
    assert body == json.dumps(doc, separators=(",", ":")).encode()
    # Same shape as cosign's vector: identical lengths of every part.
    _, hello = pem_body(HELLO_KEY.read_bytes())
    assert len(body) == len(hello)
    loaded = keys.load_private_key(data, b"pw", "k")
    assert loaded.private_numbers() == key.private_numbers()


def test_fresh_salt_and_nonce_each_time() -> None:
    key = keys.generate()
    a = json.loads(pem_body(keys.encrypt_private_key(key, b"pw"))[1])
    b = json.loads(pem_body(keys.encrypt_private_key(key, b"pw"))[1])
    assert a["kdf"]["salt"] != b["kdf"]["salt"]
    assert a["cipher"]["nonce"] != b["cipher"]["nonce"]


def test_empty_passphrase_round_trips() -> None:
    key = keys.generate()
    assert keys.load_private_key(keys.encrypt_private_key(key, b""), b"", "k").private_numbers() \
        == key.private_numbers()


# --- every accepted variant ----------------------------------------------------------------


@pytest.mark.parametrize("n", [1 << 15, 1 << 16, 1 << 17])
@pytest.mark.parametrize("pem_type", list(keyfile.ENCRYPTED_PEM_TYPES))
def test_accepted_scrypt_strengths_and_pem_types(n: int, pem_type: str) -> None:
    key = keys.generate()
    data = seal(pkcs8(key), b"secret", n, pem_type=pem_type)
    assert keys.load_private_key(data, b"secret", "k").private_numbers() == key.private_numbers()


def test_plain_pkcs8_sec1_and_encrypted_pkcs8() -> None:
    key = keys.generate()
    variants = {
        "pkcs8": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()),
        "sec1": key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()),
    }
    assert b"BEGIN EC PRIVATE KEY" in variants["sec1"]
    for name, data in variants.items():
        loaded = keys.load_private_key(data, None, name)
        assert loaded.private_numbers() == key.private_numbers()
    enc = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.BestAvailableEncryption(b"pw"))
    assert keys.load_private_key(enc, b"pw", "e").private_numbers() == key.private_numbers()
    with pytest.raises(keyfile.WrongPassphraseError) as exc:
        keys.load_private_key(enc, b"nope", "e.pem")
    assert message_of(exc) == "wrong passphrase for e.pem"


def test_text_before_the_pem_block_is_ignored_like_go() -> None:
    data = b"comment line\r\n" + HELLO_KEY.read_bytes().replace(b"\n", b"\r\n")
    keys.load_private_key(data, b"hello", "k")


# --- every refusal -------------------------------------------------------------------------


def test_encrypted_key_without_a_passphrase() -> None:
    with pytest.raises(keyfile.PassphraseError) as exc:
        keys.load_private_key(HELLO_KEY.read_bytes(), None, "a.key")
    assert "a.key is encrypted: a passphrase is needed" in message_of(exc)


@pytest.mark.parametrize("n, r, p", [(1 << 14, 8, 1), (1 << 18, 8, 1), (1 << 15, 16, 1),
                                     (1 << 15, 8, 2)])
def test_other_scrypt_parameters_are_refused(n: int, r: int, p: int) -> None:
    data = seal(pkcs8(keys.generate()), b"pw", n, r, p) if n <= 1 << 15 else pem(
        keyfile.SIGSTORE_PEM_TYPE,
        json.dumps({"kdf": {"name": "scrypt", "params": {"N": n, "r": r, "p": p}, "salt": ""},
                    "cipher": {"name": "nacl/secretbox", "nonce": ""}, "ciphertext": ""}).encode())
    with pytest.raises(keyfile.KeyFileError) as exc:
        keys.load_private_key(data, b"pw", "x.key")
    assert message_of(exc) == (
        f"x.key uses scrypt parameters N={n}, r={r}, p={p}; cosign-compatible keys use "
        "N=32768, 65536 or 131072 with r=8, p=1"
    )


def test_truncated_and_corrupt_files() -> None:
    data = HELLO_KEY.read_bytes()
    cases = {
        data[: len(data) // 2]: "k is truncated: no '-----END ENCRYPTED SIGSTORE PRIVATE KEY-----'",
        b"": "k is not a PEM file (no -----BEGIN line)",
        b"\x00\xff\x10binary": "k is not a PEM file (binary data)",
        data.replace(b"eyJrZGYi", b"eyJrZGY!"): "k is corrupt: bad base64 in the PEM body",
        pem(keyfile.COSIGN_PEM_TYPE, b'{"kdf": '):
            "k is corrupt: the encrypted key is not valid JSON",
        pem(keyfile.COSIGN_PEM_TYPE, b"[1]"):
            "k is corrupt: the encrypted key is not a JSON object",
        pem(keyfile.COSIGN_PEM_TYPE, b'{"cipher": {}}'): "k is corrupt: field 'kdf' is missing",
    }
    for bad, message in cases.items():
        with pytest.raises(keyfile.KeyFileError) as exc:
            keys.load_private_key(bad, b"hello", "k")
        assert message_of(exc).startswith(message), (bad, exc.value.message)


def test_cut_ciphertext_reads_as_wrong_passphrase_or_corrupt() -> None:
    _, body = pem_body(HELLO_KEY.read_bytes())
    doc = json.loads(body)
    ct = base64.b64decode(doc["ciphertext"])
    doc["ciphertext"] = base64.b64encode(ct[:-10]).decode()
    with pytest.raises(keyfile.WrongPassphraseError):
        keys.load_private_key(pem(keyfile.SIGSTORE_PEM_TYPE, json.dumps(doc).encode()),
                              b"hello", "k")
    doc["ciphertext"] = base64.b64encode(ct[:5]).decode()
    with pytest.raises(keyfile.KeyFileError, match="ciphertext is truncated"):
        keys.load_private_key(pem(keyfile.SIGSTORE_PEM_TYPE, json.dumps(doc).encode()),
                              b"hello", "k")
    doc["cipher"]["nonce"] = base64.b64encode(b"short").decode()
    with pytest.raises(keyfile.KeyFileError, match="the nonce is 5 bytes, not 24"):
        keys.load_private_key(pem(keyfile.SIGSTORE_PEM_TYPE, json.dumps(doc).encode()),
                              b"hello", "k")


def test_wrong_algorithms_are_refused_with_a_clear_message() -> None:
    tail = "; nestbuild signs with ECDSA P-256 keys (cosign's default)"
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    p384 = ec.generate_private_key(ec.SECP384R1())
    cases = [
        (seal(pkcs8(rsa_key), b"pw", 1 << 15), "r.key is an RSA key" + tail),
        (pem("PRIVATE KEY", pkcs8(rsa_key)), "r.key is an RSA key" + tail),
        (rsa_key.private_bytes(serialization.Encoding.PEM,
                               serialization.PrivateFormat.TraditionalOpenSSL,
                               serialization.NoEncryption()), "r.key is an RSA key" + tail),
        (seal(pkcs8(ed_key), b"pw", 1 << 15), "r.key is an ed25519 key" + tail),
        (seal(pkcs8(p384), b"pw", 1 << 15), "r.key is an ECDSA key on curve secp384r1" + tail),
        (keys.public_pem(keys.generate()),
         "r.key is a public key; signing needs the private key (.key)"),
        (pem("CERTIFICATE", b"x"), "r.key is a PEM 'CERTIFICATE', not a private key"),
    ]
    for data, message in cases:
        with pytest.raises(keyfile.KeyFileError) as exc:
            keys.load_private_key(data, b"pw", "r.key")
        assert message_of(exc) == message


def test_legacy_openssl_encrypted_pem_is_explained() -> None:
    data = (b"-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n"
            b"DEK-Info: AES-128-CBC,00112233445566778899AABBCCDDEEFF\n\nAAAA\n"
            b"-----END EC PRIVATE KEY-----\n")
    with pytest.raises(keyfile.KeyFileError, match="legacy OpenSSL PEM encryption"):
        keys.load_private_key(data, b"pw", "old.pem")


def test_public_keys() -> None:
    pub = keys.load_public_key(CI_PUB.read_bytes(), "cosign.pub")
    assert isinstance(pub.curve, ec.SECP256R1)
    rsa_pub = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    cases = [
        (rsa_pub.public_bytes(serialization.Encoding.PEM, spki), "p.pub is an RSA key; nestbuild"),
        (p384.public_bytes(serialization.Encoding.PEM, spki),
         "p.pub is an ECDSA key on curve secp384r1"),
        (HELLO_KEY.read_bytes(),
         "p.pub is a PEM 'ENCRYPTED SIGSTORE PRIVATE KEY', not a 'PUBLIC KEY'; use the .pub file"),
        (pem("PUBLIC KEY", b"\x30\x03junk"), "p.pub is corrupt: the public key does not parse"),
    ]
    for data, message in cases:
        with pytest.raises(keyfile.KeyFileError) as exc:
            keys.load_public_key(data, "p.pub")
        assert message_of(exc).startswith(message)


def test_signatures_are_der_and_bound_to_data_and_key() -> None:
    key = keys.generate()
    sig = keys.sign(key, b"payload")
    assert sig[0] == 0x30 and sig[1] == len(sig) - 2  # ASN.1 DER SEQUENCE
    assert keys.verify(key.public_key(), b"payload", sig)
    assert not keys.verify(key.public_key(), b"payloaD", sig)
    assert not keys.verify(keys.generate().public_key(), b"payload", sig)
    assert not keys.verify(key.public_key(), b"payload", sig[:-1])
    assert not keys.verify(key.public_key(), b"payload", b"")


# --- files ---------------------------------------------------------------------------------


def test_write_key_pair_modes_and_round_trip(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        key_path, pub_path = keys.write_key_pair(tmp_path / "signing", b"pw")
    finally:
        os.umask(old)
    assert (key_path.name, pub_path.name) == ("signing.key", "signing.pub")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub_path.stat().st_mode) == 0o644  # as cosign writes it
    key = keys.load_private_key(key_path.read_bytes(), b"pw", str(key_path))
    pub = keys.load_public_key(pub_path.read_bytes(), str(pub_path))
    assert keys.public_pem(key) == keys.public_pem(pub) == pub_path.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["signing.key", "signing.pub"]


def test_write_key_pair_respects_a_strict_umask_and_a_given_key(tmp_path: Path) -> None:
    key = keys.generate()
    old = os.umask(0o077)
    try:
        key_path, pub_path = keys.write_key_pair(tmp_path / "s", b"pw", key=key)
    finally:
        os.umask(old)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub_path.stat().st_mode) == 0o600
    assert keys.load_private_key(key_path.read_bytes(), b"pw", "s.key").private_numbers() \
        == key.private_numbers()


def test_write_key_pair_never_overwrites_without_force(tmp_path: Path) -> None:
    key_path, pub_path = keys.write_key_pair(tmp_path / "k", b"pw")
    before = key_path.read_bytes(), pub_path.read_bytes()
    with pytest.raises(keyfile.KeyFileError) as exc:
        keys.write_key_pair(tmp_path / "k", b"pw")
    assert message_of(exc) == f"{key_path} already exists (use --force to replace it)"
    assert (key_path.read_bytes(), pub_path.read_bytes()) == before
    # A lone .pub blocks too, and no .key is left behind.
    (tmp_path / "other.pub").write_bytes(b"keep")
    with pytest.raises(keyfile.KeyFileError, match=r"other\.pub already exists"):
        keys.write_key_pair(tmp_path / "other", b"pw")
    assert not (tmp_path / "other.key").exists()
    assert (tmp_path / "other.pub").read_bytes() == b"keep"


def test_write_key_pair_force_replaces_atomically(tmp_path: Path) -> None:
    key_path, pub_path = keys.write_key_pair(tmp_path / "k", b"pw")
    old_pub = pub_path.read_bytes()
    keys.write_key_pair(tmp_path / "k", b"new", force=True)
    assert pub_path.read_bytes() != old_pub
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    keys.load_private_key(key_path.read_bytes(), b"new", "k.key")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.key", "k.pub"]


def test_write_key_pair_force_onto_a_directory_keeps_old_key(tmp_path: Path) -> None:
    key_path, _ = keys.write_key_pair(tmp_path / "k", b"pw")
    before = key_path.read_bytes()
    (tmp_path / "k.pub").unlink()
    (tmp_path / "k.pub").mkdir()
    (tmp_path / "k.pub" / "f").write_text("x")
    with pytest.raises(keyfile.KeyFileError, match="cannot write"):
        keys.write_key_pair(tmp_path / "k", b"new", force=True)
    # The .pub could not be replaced, so the old key was put back: still a matching pair.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.key", "k.pub"]
    assert key_path.read_bytes() == before


# --- passphrases ---------------------------------------------------------------------------


def test_passphrase_from_env_in_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NB_TEST_A", "from-a")
    monkeypatch.setenv("NB_TEST_B", "from-b")
    pw_file = tmp_path / "pw"
    pw_file.write_bytes(b"from-file\n")
    assert keyfile.get_passphrase(env=("NB_TEST_A", "NB_TEST_B"), file=pw_file) == b"from-a"
    assert keyfile.get_passphrase(env=("NB_TEST_X", "NB_TEST_B"), file=pw_file) == b"from-b"
    monkeypatch.setenv("NB_TEST_E", "")
    assert keyfile.get_passphrase(env=("NB_TEST_E",), file=pw_file) == b""  # set counts, as cosign


def test_passphrase_from_file_first_line(tmp_path: Path) -> None:
    pw_file = tmp_path / "pw"
    for content, expected in [(b"s3cret\n", b"s3cret"), (b"s3cret", b"s3cret"),
                              (b"a b \r\nsecond\n", b"a b "), (b"", b""), (b"\n", b"")]:
        pw_file.write_bytes(content)
        assert keyfile.get_passphrase(env=(), file=pw_file, prompt=False) == expected
    with pytest.raises(keyfile.PassphraseError) as exc:
        keyfile.get_passphrase(env=(), file=tmp_path / "missing", prompt=False)
    assert message_of(exc) == (
        f"cannot read passphrase file {tmp_path / 'missing'}: No such file or directory"
    )


def test_no_passphrase_without_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NESTBUILD_PASSWORD", raising=False)
    monkeypatch.delenv("COSIGN_PASSWORD", raising=False)
    assert not sys.stdin.isatty()
    with pytest.raises(keyfile.PassphraseError) as exc:
        keyfile.get_passphrase(prompt=True)
    msg = message_of(exc)
    assert "set NESTBUILD_PASSWORD or COSIGN_PASSWORD or use --passphrase-file" in msg
    assert "stdin is not a terminal" in msg


def _prompt_in_pty(answers: list[bytes], confirm: bool) -> tuple[int, bytes]:
    """get_passphrase in a child on a real pseudo-terminal, typing ``answers``."""
    code = (
        "import sys\nfrom nestbuild.signing import keyfile\n"
        "try:\n"
        f"    pw = keyfile.get_passphrase(env=(), prompt=True, confirm={confirm})\n"
        "    print('GOT=' + pw.decode(), flush=True)\n"
        "except keyfile.PassphraseError as e:\n"
        "    print('ERR=' + e.message, flush=True)\n"
    )
    return run_in_pty([sys.executable, "-c", code], answers)


def test_prompt_on_a_terminal() -> None:
    code, out = _prompt_in_pty([b"typed pw"], confirm=False)
    assert code == 0, out
    assert b"Enter passphrase for the private key:" in out
    assert b"GOT=typed pw" in out
    assert b"typed pw\r\n" not in out.split(b"GOT=")[0]  # not echoed
    code, out = _prompt_in_pty([b"one", b"two"], confirm=True)
    assert b"ERR=the two passphrases differ" in out, out
    code, out = _prompt_in_pty([b"same", b"same"], confirm=True)
    assert b"GOT=same" in out, out


# --- the real cosign -----------------------------------------------------------------------


def test_cosign_generated_key_loads(cosign: Cosign, tmp_path: Path) -> None:
    cosign("generate-key-pair", "--output-key-prefix", tmp_path / "c", password="p4ss")
    data = (tmp_path / "c.key").read_bytes()
    pem_type, body = pem_body(data)
    assert pem_type == "ENCRYPTED SIGSTORE PRIVATE KEY"
    assert json.loads(body)["kdf"]["params"]["N"] == 1 << 16  # cosign 2.5 default strength
    key = keys.load_private_key(data, b"p4ss", "c.key")
    assert keys.public_pem(key) == (tmp_path / "c.pub").read_bytes()
    with pytest.raises(keyfile.WrongPassphraseError):
        keys.load_private_key(data, b"p4sS", "c.key")
    # An empty password is allowed by cosign, and must be by nestbuild.
    cosign("generate-key-pair", "--output-key-prefix", tmp_path / "e", password="")
    keys.load_private_key((tmp_path / "e.key").read_bytes(), b"", "e.key")


def test_nestbuild_key_signs_with_cosign(cosign: Cosign, tmp_path: Path) -> None:
    key_path, pub_path = keys.write_key_pair(tmp_path / "nb", b"nb-pass")
    blob = tmp_path / "blob"
    blob.write_bytes(b"signed by cosign with a nestbuild key\n")
    cosign("sign-blob", "--key", key_path, "--tlog-upload=false", "--output-signature",
           tmp_path / "blob.sig", blob, password="nb-pass")
    sig = base64.b64decode((tmp_path / "blob.sig").read_bytes())
    pub = keys.load_public_key(pub_path.read_bytes(), "nb.pub")
    assert keys.verify(pub, blob.read_bytes(), sig)
    assert not keys.verify(pub, blob.read_bytes() + b"x", sig)
    # cosign really decrypts it: a wrong password fails.
    code, out = cosign("sign-blob", "--key", key_path, "--tlog-upload=false", blob,
                       password="wrong", check=False)
    assert code != 0 and "decrypt" in out


def test_nestbuild_signature_verifies_with_cosign(cosign: Cosign, tmp_path: Path) -> None:
    key_path, pub_path = keys.write_key_pair(tmp_path / "nb", b"pw")
    key = keys.load_private_key(key_path.read_bytes(), b"pw", "nb.key")
    blob = tmp_path / "blob"
    blob.write_bytes(b"signed by nestbuild\n")
    (tmp_path / "blob.sig").write_bytes(base64.b64encode(keys.sign(key, blob.read_bytes())))
    _, out = cosign("verify-blob", "--key", pub_path, "--insecure-ignore-tlog", "--signature",
                    tmp_path / "blob.sig", blob)
    assert "Verified OK" in out
    blob.write_bytes(b"signed by nestbuilD\n")
    code, _ = cosign("verify-blob", "--key", pub_path, "--insecure-ignore-tlog", "--signature",
                     tmp_path / "blob.sig", blob, check=False)
    assert code != 0


def test_cosign_public_key_of_a_nestbuild_key(cosign: Cosign, tmp_path: Path) -> None:
    key_path, pub_path = keys.write_key_pair(tmp_path / "nb", b"pw")
    cosign("public-key", "--key", key_path, "--outfile", tmp_path / "derived.pub", password="pw")
    assert (tmp_path / "derived.pub").read_bytes() == pub_path.read_bytes()


# --- hostile key files: one line, never a traceback ----------------------------------------


def _sealed_with_params(params: object) -> bytes:
    _, body = pem_body(HELLO_KEY.read_bytes())
    doc = json.loads(body)
    doc["kdf"]["params"] = params
    return pem(keyfile.SIGSTORE_PEM_TYPE, json.dumps(doc).encode())


@pytest.mark.parametrize("params, shown", [
    ({"N": [], "r": 8, "p": 1}, "N=an array, r=8, p=1"),
    ({"N": {}, "r": 8, "p": 1}, "N=an object, r=8, p=1"),
    ({"N": "32768", "r": 8, "p": 1}, 'N="32768", r=8, p=1'),
    ({"N": 32768.0, "r": 8, "p": 1}, "N=32768.0, r=8, p=1"),
    ({"N": 32768, "r": True, "p": 1}, "N=32768, r=true, p=1"),
    ({"r": 8, "p": [1]}, "N=null, r=8, p=an array"),
])
def test_kdf_parameters_that_are_not_integers_are_refused(params: object, shown: str) -> None:
    """A list is not hashable: ``"N": []`` was a TypeError (a traceback), not a refusal."""
    with pytest.raises(keyfile.KeyFileError) as exc:
        keys.load_private_key(_sealed_with_params(params), b"hello", "k.key")
    assert message_of(exc) == (
        f"k.key uses scrypt parameters {shown}; cosign-compatible keys use N=32768, 65536 or "
        "131072 with r=8, p=1"
    )


def test_the_executable_reports_a_malformed_key_in_one_line(tmp_path: Path) -> None:
    """``sign --key`` (whose key starts decrypting before argparse) and ``verify --key`` with
    a key file whose kdf parameters are not integers: exit 2, one line, no traceback."""
    import subprocess

    from tests.ocibuilder import write_image

    root = tmp_path / "layout"
    write_image(root, [b"one"], tag="v1")
    bad = tmp_path / "bad.key"
    bad.write_bytes(_sealed_with_params({"N": [], "r": 8, "p": 1}))
    env = {**os.environ, "NESTBUILD_PASSWORD": "hello"}
    for args, expected in (
        (["sign", f"oci:{root}:v1", "--key", str(bad), "--identity", "reg.example/os:v1"],
         f"error: {bad} uses scrypt parameters N=an array, r=8, p=1; cosign-compatible keys "
         "use N=32768, 65536 or 131072 with r=8, p=1"),
        (["verify", f"oci:{root}:v1", "--key", str(bad)],
         f"error: {bad} is a PEM 'ENCRYPTED SIGSTORE PRIVATE KEY', not a 'PUBLIC KEY'; use "
         "the .pub file"),
    ):
        r = subprocess.run([sys.executable, "-m", "nestbuild", *args], capture_output=True,
                           text=True, env=env, check=False)
        assert (r.returncode, r.stderr) == (2, expected + "\n"), args[0]
