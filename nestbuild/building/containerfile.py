"""Just enough Containerfile parsing to know what an image is built FROM.

nestbuild must know the OS base before building (to refuse a non-bootable one and to pin it):
the final stage's FROM, with ARG substitution, followed through stage aliases
(``FROM builder``) to a real image. Errors name the file and line.

What is a comment is what buildah says (and Docker): a line whose first non-blank character
is ``#``, also between the lines of a continued instruction; a ``#`` after an instruction is
part of it (``COPY motd /etc/motd  # config`` copies a file named ``#``). Blank lines inside a
continued instruction are skipped, and the ``# escape=`` directive at the top changes the
continuation character.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nestbuild._util import userfile
from nestbuild.errors import UsageError

_VAR = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::?(?P<op>[-+])(?P<word>[^}]*))?\}"
                  r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")
#: Instructions that need BuildKit when given to the classic Docker builder.
BUILDKIT_ONLY = re.compile(r"^\s*(?:RUN|COPY|ADD)\s+(?:--mount|--link|--chmod=\S+\s+--link|<<)",
                           re.IGNORECASE)


@dataclass
class Stage:
    base: str
    name: str | None
    line: int
    platform: str | None = None


@dataclass
class Containerfile:
    path: Path
    stages: list[Stage]
    #: ARGs declared before the first FROM, with their defaults.
    global_args: dict[str, str | None] = field(default_factory=dict)
    needs_buildkit: str | None = None

    def final_base(self) -> tuple[str, Stage]:
        """The image the final stage builds on, through stage aliases."""
        stage = self.stages[-1]
        names = {s.name: s for s in self.stages if s.name}
        seen: set[str] = set()
        while stage.base.lower() in names and stage.base.lower() not in seen:
            seen.add(stage.base.lower())
            stage = names[stage.base.lower()]
        return stage.base, stage


def substitute(text: str, values: Mapping[str, str | None], where: str) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group("braced") or m.group("plain")
        value = values.get(name)
        op = m.group("op")
        if op == "-":
            return value if value else m.group("word")
        if op == "+":
            return m.group("word") if value else ""
        if value is None:
            return ""
        return value

    return _VAR.sub(repl, text)


_DIRECTIVE = re.compile(r"#\s*([A-Za-z]+)\s*=\s*(.*?)\s*")


def directives(text: str) -> dict[str, str]:
    """The parser directives (``# syntax=``, ``# escape=``): comment lines at the very top,
    before any blank line, other comment or instruction; names are case-insensitive."""
    found: dict[str, str] = {}
    for raw in text.splitlines():
        m = _DIRECTIVE.fullmatch(raw.strip())
        if m is None or m.group(1).lower() in found:
            break
        found[m.group(1).lower()] = m.group(2)
    return found


def logical_lines(text: str, escape: str = "\\") -> list[tuple[int, str]]:
    """Instructions with continuations joined, comments and blank lines dropped, as buildah
    reads them (see the module docstring)."""
    out: list[tuple[int, str]] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue  # blank or a comment, within a continued instruction too
        if not buf:
            start = number
        if line.endswith(escape):
            buf.append(line[:-1])
            continue
        buf.append(line)
        out.append((start, " ".join(part.strip() for part in buf)))
        buf = []
    if buf:
        out.append((start, " ".join(part.strip() for part in buf)))
    return out


def parse(path: Path, build_args: Mapping[str, str] | None = None) -> Containerfile:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such Containerfile") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror})") from None
    text = userfile.decode(data, str(path), UsageError)  # as buildah reads it, any locale
    build_args = dict(build_args or {})
    global_args: dict[str, str | None] = {}
    stages: list[Stage] = []
    needs_buildkit = None
    found = directives(text)
    escape = found.get("escape", "\\")
    if escape not in ("\\", "`"):
        raise UsageError(f"{path}:1: # escape={escape}: the escape character is \\ or `")
    for line_no, line in logical_lines(text, escape):
        where = f"{path}:{line_no}"
        word, _, rest = line.strip().partition(" ")
        instr = word.upper()
        if not re.fullmatch(r"[A-Z]+", instr):
            raise UsageError(f"{where}: not an instruction: {word!r}")
        if instr == "ARG" and not stages:
            for decl in rest.split():
                name, eq, default = decl.partition("=")
                global_args[name] = build_args.get(name, default.strip('"\'') if eq else None)
        elif instr == "FROM":
            tokens = rest.split()
            platform = None
            while tokens and tokens[0].startswith("--"):
                flag = tokens.pop(0)
                if flag.startswith("--platform="):
                    platform = flag.split("=", 1)[1]
            if not tokens:
                raise UsageError(f"{where}: FROM needs an image")
            image = substitute(tokens[0], global_args, where)
            if not image:
                raise UsageError(f"{where}: FROM {tokens[0]} is empty after ARG substitution "
                                 "(set it with --build-arg)")
            name = None
            if len(tokens) >= 3 and tokens[1].upper() == "AS":
                name = tokens[2].lower()
            elif len(tokens) != 1:
                hint = ""
                if any(t.startswith("#") for t in tokens):
                    hint = (" (a # after an instruction is not a comment: only at the start "
                            "of a line)")
                raise UsageError(f"{where}: expected FROM IMAGE [AS NAME]{hint}")
            stages.append(Stage(image, name, line_no, platform))
        elif not stages:
            raise UsageError(f"{where}: {instr} before the first FROM")
        elif needs_buildkit is None and BUILDKIT_ONLY.match(line):
            needs_buildkit = f"{where}: {line.strip()[:60]}"
    if not stages:
        raise UsageError(f"{path}: no FROM instruction")
    if "syntax" in found:
        needs_buildkit = needs_buildkit or f"{path}:1: # syntax= directive"
    return Containerfile(path, stages, global_args, needs_buildkit)
