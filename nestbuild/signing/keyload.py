"""A signing key decrypted in the background, started as early as the process can.

Decrypting a cosign key is mostly scrypt (N=2^15: ~100 ms), which releases the GIL, so the
derivation runs in a thread while the command line is parsed and the registry is read. This
module imports only the key file formats (:mod:`nestbuild.signing.keyfile`, the standard
library) before the thread starts; the keys themselves (:mod:`nestbuild.signing.keys`, with
cryptography and PyNaCl) are imported in the thread, once scrypt is done.
"""

from __future__ import annotations

import os

from nestbuild._util.background import in_thread
from nestbuild.errors import NestbuildError
from nestbuild.signing.keyfile import (
    ENCRYPTED_PEM_TYPES,
    KeyFileError,
    PassphraseError,
    get_passphrase,
    parse_sealed,
    pem_block,
    read_file,
)

TYPE_CHECKING = False  # not typing's: importing typing (or pathlib) costs scrypt's head start
if TYPE_CHECKING:
    from collections.abc import Callable

    from nestbuild.signing.keyfile import FilePath
    from nestbuild.signing.keys import PrivateKey

#: A key started by :func:`start_early`: (path, passphrase file, the waiting callable).
_early: list[tuple[str, str | None, Callable[[], PrivateKey]]] = []


def start_early(path: str, passphrase_file: str | None) -> None:
    """Start decrypting a key before the command line is parsed, if no prompt is needed.

    :func:`start_loading` for the same files then returns it. Nothing is reported here: a
    key that cannot be read is read again, and its error reported, by the command.
    """
    try:
        loading = start_loading(path, passphrase_file=passphrase_file, prompt=False)
    except (NestbuildError, OSError):
        return
    _early.append((path, passphrase_file, loading))


def start_loading(
    path: FilePath, *, passphrase_file: FilePath | None = None, prompt: bool = True
) -> Callable[[], PrivateKey]:
    """Start decrypting a private key file; the returned callable waits for the key.

    The file is read and its envelope checked here, and the passphrase obtained (a prompt
    must not come from a thread); for a cosign key the scrypt derivation then runs in a thread,
    which then opens the key (importing PyNaCl and cryptography, if the caller has not yet)
    and makes OpenSSL's one-time signing set-up, all off the caller's thread.
    Errors found later (wrong passphrase, a key that does not parse) are raised by the callable.
    """
    if _early:
        early_path, early_file, loading = _early.pop()
        if early_path == os.fspath(path) and early_file == (
            None if passphrase_file is None else os.fspath(passphrase_file)
        ):
            return loading
    source = str(path)
    try:
        data = read_file(path)
    except OSError as exc:
        raise KeyFileError(f"cannot read key {path}: {exc.strerror}") from None
    pem_type, _, der = pem_block(data, source)
    if pem_type in ENCRYPTED_PEM_TYPES:
        sealed = parse_sealed(der, source)
        passphrase = get_passphrase(file=passphrase_file, prompt=prompt, label=source)
        # Imported here, not in the thread: importing holds the GIL, scrypt does not.
        import nacl._sodium  # noqa: F401

        def opened() -> PrivateKey:
            box_key = sealed.derive(passphrase)
            from nestbuild.signing import keys

            key = keys.open_sealed(sealed, box_key, source)
            keys.warm_up()
            return key

        return in_thread(opened, "nestbuild-key")
    from nestbuild.signing import keys

    try:
        key = keys.load_private_key(data, None, source)
        return lambda: key
    except PassphraseError:
        pass  # an encrypted PKCS#8 key: now get the passphrase
    passphrase = get_passphrase(file=passphrase_file, prompt=prompt, label=source)
    loaded: Callable[[], PrivateKey] = in_thread(
        lambda: keys.load_private_key(data, passphrase, source))
    return loaded
