"""Text files that users and nodes supply (policy files, ``nestbuild.yaml``, Containerfiles,
registries.d), read with one-line errors that name file and line: UTF-8 whatever the locale,
and YAML with no PyYAML exception left to escape.

PyYAML reports most problems as a ``MarkedYAMLError`` with a line, but not all of them: a
control character or invalid UTF-8 is a ``ReaderError`` without a mark, deep nesting a
``RecursionError``, and constructing a scalar whose tag does not fit its value (``!!int abc``,
``!!bool x``, ``!!timestamp x``, ``2020-13-45``) a bare ``ValueError``, ``KeyError`` or
``AttributeError``. So documents are only composed here, and scalars read by
:func:`yaml_boolean` and :func:`yaml_plain`, which never run PyYAML's constructors.
Composing never expands aliases, so a "billion laughs" document stays small.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nestbuild.errors import NestbuildError

if TYPE_CHECKING:  # imported where used: registering the CLI's flags must stay cheap
    import yaml

BOOL_TAG = "tag:yaml.org,2002:bool"
#: Scalars taken as the text the user wrote: ``tag: 1.10`` is "1.10", not the float 1.1.
TEXT_TAGS = frozenset({
    "tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:timestamp",
})
#: YAML 1.1's booleans, as PyYAML's SafeLoader resolves them.
_BOOLEANS = {"yes": True, "no": False, "true": True, "false": False, "on": True, "off": False}


def read_text(path: Path, error: type[NestbuildError], what: str = "") -> str:
    """A UTF-8 text file; ``what`` ends the "cannot read" message (" policy")."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read{what} ({exc.strerror})") from None
    except ValueError:  # a NUL in the name (from a file that names another)
        raise error(f"{str(path)!r}: cannot read{what} (a NUL byte in its name)") from None
    return decode(data, str(path), error)


def decode(data: bytes, source: str, error: type[NestbuildError]) -> str:
    """``data`` as UTF-8, or ``error`` naming the line of the first byte that is not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error(f"{source}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x})") from None


def json_document(data: bytes, source: str, error: type[NestbuildError], *,
                  lines: bool = True) -> Any:
    """Any JSON document from untrusted bytes; every problem is one ``error`` line naming
    ``source``: for a file a person edits (``lines``), with the line of a syntax error; for a
    blob, with the parser's own words."""
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        if lines:
            raise error(f"{source}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        raise error(f"{source}: not valid JSON ({exc})") from None
    except UnicodeDecodeError:
        raise error(f"{source}: not valid JSON (not UTF-8)") from None
    except (ValueError, RecursionError):  # a number past the digit limit; deep nesting
        raise error(f"{source}: not valid JSON (a number too long or nesting too deep)") \
            from None


def json_object(data: bytes, source: str, error: type[NestbuildError],
                kind: str) -> dict[str, Any]:
    """A JSON file that must hold an object (:func:`json_document`); ``kind`` names what
    the file is."""
    doc = json_document(data, source, error)
    if not isinstance(doc, dict):
        raise error(f"{source}: {kind} must hold a JSON object")
    return doc


def compose_yaml(text: str, source: str, error: type[NestbuildError]) -> yaml.Node | None:
    """The document's node tree (None when it is empty); every problem is ``error``."""
    import yaml

    # libyaml's parser where PyYAML has it (its wheels do): it stops nesting at a depth
    # limit, where the pure-Python scanner spends seconds on a line of 5,000 '[' first.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.compose(text, Loader=loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        raise error(f"{source}:{line}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.reader.ReaderError:  # a control character; no line in the error itself
        found = yaml.reader.Reader.NON_PRINTABLE.search(text)
        if found is None:
            raise error(f"{source}: invalid YAML: a character that is not allowed") from None
        at = found.start()
        raise error(f"{source}:{text.count(chr(10), 0, at) + 1}: invalid YAML: control "
                    f"character U+{ord(text[at]):04X} is not allowed") from None
    except yaml.YAMLError as exc:  # no other kind is raised today; keep it one line
        raise error(f"{source}: invalid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise error(f"{source}: invalid YAML: nested too deeply") from None


def yaml_boolean(node: yaml.Node) -> bool | None:
    """A YAML 1.1 boolean scalar (true, yes, on...), or None if ``node`` is anything else."""
    import yaml

    if isinstance(node, yaml.ScalarNode) and node.tag == BOOL_TAG:
        return _BOOLEANS.get(str(node.value).lower())
    return None


def yaml_plain(node: yaml.Node) -> str | None:
    """A scalar's text as written, if it is a string or a number (or a date); None for null,
    booleans, explicitly tagged oddities and collections."""
    import yaml

    if isinstance(node, yaml.ScalarNode) and node.tag in TEXT_TAGS:
        return str(node.value)
    return None
