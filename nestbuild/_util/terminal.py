"""Text from images, registries and files, made safe to show on a terminal.

A file name in a layer, an image label, a registry's error message, a path the user typed: any
of them can hold terminal escape sequences (clear the screen, rewrite the line above into a
forged ``PASSED``), line breaks (a second, forged line after the one-line cause), bidi
overrides (text that reads other than it is) or rich markup (a forged style, or the markup
parser's own exception instead of the message). Everything nestbuild shows people goes
through :func:`printable` and is printed as plain text, never parsed as markup.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """``text`` on one line with every non-printable character shown as its Python escape
    (``\\x1b``, ``\\n``, ``\\u202e``, ``\\udcff`` for an undecodable byte): what is there, and
    nothing the terminal would act on."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
