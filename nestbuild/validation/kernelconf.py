"""The kernel configuration files an image carries, read the way the node reads them.

Both sides need the same reading: the ``bootc-kargs`` and ``kmod-kernel-mismatch`` lints
judge what an image carries, and ``nestbuild build --kargs/--modules`` checks a profile before
writing it into the image. This module imports nothing of either, so each imports it.
"""

from __future__ import annotations


def kargs_problem(data: bytes) -> str | None:
    """The problem with a kargs.d TOML file, as bootc would see it; None if it is valid."""
    import tomllib  # here: most images carry no kargs.d file, every validate imports this

    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return f"invalid TOML: {exc}"
    unknown = set(doc) - {"kargs", "match-architectures"}
    if unknown:
        return f"unknown key(s) {', '.join(sorted(unknown))}"
    kargs = doc.get("kargs")
    if not isinstance(kargs, list) or not all(isinstance(k, str) for k in kargs):
        return "kargs must be a list of strings"
    arches = doc.get("match-architectures", [])
    if not isinstance(arches, list) or not all(isinstance(a, str) for a in arches):
        return "match-architectures must be a list of strings"
    return None


def modules_to_load(text: str) -> list[str]:
    """Module names in a modules-load.d file (``#`` and ``;`` start comments)."""
    names = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].split(";", 1)[0].strip()
        if line:
            names.append(line)
    return names
