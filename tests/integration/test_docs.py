"""Every shell command in README.md and docs/ runs here, so no documented path goes stale.

Which blocks are commands (docs/README.md says the same for writers):

- fenced blocks marked ``sh``, ``shell``, ``bash`` (every line a command) or ``console`` (the
  lines after ``$ `` are commands; the others are what they print, not compared);
- indented code blocks (four spaces, after a blank line): every line a command;
- a trailing ``\\`` continues a command on the next line; ``#`` lines are comments.

Every other block (``text``, ``json``, ``yaml``, ``Dockerfile``, no language) is not run.
``<!-- not-run: REASON -->`` on the line before a block keeps it from running; the reasons are
listed by :func:`test_not_run_blocks_say_why`.

Each document runs once, its commands in order in one shell (``cd`` carries over), in a
scratch directory that is also ``$HOME``, against real components: the mini base in local
storage, buildah, a TLS registry with auth (``registry.example.com`` and ``reg.example.com``
stand for it; its CA and credentials come from ``SSL_CERT_FILE`` and ``REGISTRY_AUTH_FILE``),
ostree. What a document assumes is already there (a key, an image in the registry, a
Containerfile) is set up first by the document's :class:`Setup`, shown on failure.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nestbuild._tools import buildah
from nestbuild.building import baseimage
from tests.fixtures.common import persistent_cache
from tests.fixtures.images import REPO, BuildImage
from tests.fixtures.registry import Registry

BIN = Path(sys.executable).parent
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
RUN_LANGS = {"sh", "shell", "bash", "console"}
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.+?)\s*-->")
FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)")

@dataclass
class Command:
    line: int
    text: str


@dataclass
class Block:
    doc: str
    line: int
    lang: str
    commands: list[Command]
    skip: str | None = None


def _logical(lines: list[tuple[int, str]]) -> list[Command]:
    """Join ``\\`` continuations; drop blanks and comment lines."""
    out: list[Command] = []
    pending: Command | None = None
    for number, text in lines:
        if pending is not None:
            pending.text += "\n" + text
        elif text.strip() and not text.lstrip().startswith("#"):
            pending = Command(number, text)
        if pending is not None and not text.endswith("\\"):
            out.append(pending)
            pending = None
    if pending is not None:
        out.append(pending)
    return out


def _console(lines: list[tuple[int, str]]) -> list[Command]:
    """``$ `` lines and their continuations; the rest is output."""
    out: list[Command] = []
    continuing = False
    for number, text in lines:
        if continuing:
            out[-1].text += "\n" + text
        elif text.startswith("$ "):
            out.append(Command(number, text[2:]))
        else:
            continue
        continuing = text.endswith("\\")
    return out


def parse(path: Path) -> list[Block]:
    """The code blocks of a markdown document that hold shell commands."""
    doc = str(path.relative_to(REPO))
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        marker = _marker(lines, i)
        if fence:
            end = i + 1
            while end < len(lines) and not lines[end].startswith(fence.group(1)):
                end += 1
            lang = fence.group(2).lower()
            body = [(n + 1, lines[n]) for n in range(i + 1, end)]
            if lang in RUN_LANGS:
                commands = _console(body) if lang == "console" else _logical(body)
                blocks.append(Block(doc, i + 1, lang, commands, marker))
            i = end + 1
            continue
        if (lines[i].startswith("    ") and lines[i].strip() and i > 0
                and not lines[i - 1].strip()):
            end = i
            while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
                end += 1
            body = [(n + 1, lines[n][4:]) for n in range(i, end)]
            blocks.append(Block(doc, i + 1, "indented", _logical(body), marker))
            i = end
            continue
        i += 1
    return blocks


def _marker(lines: list[str], i: int) -> str | None:
    """The not-run reason on the line before line ``i`` (a blank line may come between)."""
    j = i - 1
    if j >= 0 and not lines[j].strip():
        j -= 1
    found = NOT_RUN.search(lines[j]) if j >= 0 else None
    return found.group(1) if found else None


# --- per-document set-up -------------------------------------------------------------------

@dataclass
class Setup:
    """What a document assumes: commands run before its own, files, variables, and the
    example names it uses that stand for real things here."""

    commands: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    cleanup: list[str] = field(default_factory=list)


@dataclass
class World:
    """The real components the documents run against, made once per session."""

    registry: Registry
    mini: str
    build_image: BuildImage
    scratch: Path

    def image(self, text: str) -> str:
        return self.build_image(f"ARG BASE\nFROM ${{BASE}}\n{text}\n")


def _push(world: World, local: str, remote: str) -> str:
    return f"nestbuild push {local} {remote} --sign-key cosign.key -q"


MINI = baseimage.default_tag("mini")


def setup_for(doc: str, world: World) -> Setup:
    reg = world.registry.host
    names = {"registry.example.com": reg, "reg.example.com": reg}
    unique = uuid.uuid4().hex[:8]
    keygen = "nestbuild keygen --output-prefix cosign"
    if doc == "docs/ci.md":
        return Setup(files={"Containerfile": f"FROM {MINI}\nCOPY motd /etc/motd\n",
                            "motd": "managed\n"},
                     env={"IMAGE": f"localhost/nestbuild-test/docs-ci:{unique}"},
                     cleanup=[f"localhost/nestbuild-test/docs-ci:{unique}"])
    if doc == "docs/containerfile.md":
        return Setup(files={"Containerfile": _dockerfile_block(REPO / doc),
                            "motd": "managed\n", "90-host.conf": "vm.swappiness = 10\n"},
                     names={"quay.io/fedora/fedora-bootc:41": MINI},
                     cleanup=["localhost/my-node:latest"])
    if doc == "docs/build.md":
        return Setup(cleanup=["localhost/my-node:latest"])
    if doc == "docs/changelog.md":
        return Setup(cleanup=["localhost/my-node:v2"])
    if doc == "docs/signing.md":
        web = world.image("ENV WEB=1")
        return Setup(commands=[keygen, _push(world, web, f"{reg}/nodes/web:v3")],
                     files={"sbom.json": '{"spdxVersion": "SPDX-2.3"}\n'}, names=names)
    if doc == "docs/nodes.md":
        # the images carry the node's trust in /etc, as the document says they should
        # (nestbuild build --trust), so each deployment checks the next
        commands, files, cleanup = [keygen], {}, []
        for version in ("v1", "v2", "v3"):
            local = f"localhost/nestbuild-test/docs-node:{version}-{unique}"
            files[f"{version}/Containerfile"] = f"FROM {world.mini}\nENV VERSION={version}\n"
            commands += [f"nestbuild build -q -t {local} --trust {reg}/fleet/node "
                         f"--trust-key cosign.pub {version}",
                         _push(world, local, f"{reg}/fleet/node:{version}")]
            cleanup.append(local)
        commands.append(f"nestbuild node trust {reg}/fleet/node --key cosign.pub "
                        "--out node-trust")
        return Setup(commands=commands, files=files, names=names, cleanup=cleanup)
    if doc == "docs/rollout.md":
        # two nodes' worth of images, carrying the node trust as in docs/nodes.md; "broken"
        # lacks /etc/node-release, which the document's health command looks for
        commands, files, cleanup = [keygen], {"fleet.ini": _inventory_block(REPO / doc)}, []
        for version in ("v1", "v2", "v3", "broken"):
            local = f"localhost/nestbuild-test/docs-rollout:{version}-{unique}"
            dest = "/etc/broken-release" if version == "broken" else "/etc/node-release"
            files[f"{version}/Containerfile"] = f"FROM {world.mini}\nCOPY node-release {dest}\n"
            files[f"{version}/node-release"] = f"{version}\n"
            commands += [f"nestbuild build -q -t {local} --trust {reg}/fleet/os "
                         f"--trust-key cosign.pub {version}",
                         _push(world, local, f"{reg}/fleet/os:{version}")]
            cleanup.append(local)
        commands.append(f"nestbuild node trust {reg}/fleet/os --key cosign.pub --out node-trust")
        return Setup(commands=commands, files=files, names=names, cleanup=cleanup)
    if doc == "docs/debian-base.md":
        return Setup(commands=[
            f"mkdir -p cache && ln -s {persistent_cache('base-rootfs')} cache/rootfs"],
            env={"NESTBUILD_CACHE": str(world.scratch / "docs-debian-base" / "cache")})
    if doc == "docs/architecture.md":
        return Setup(commands=[f"ln -s {shlex.quote(sys.prefix)} .venv"])
    return Setup(names=names)


def _inventory_block(path: Path) -> str:
    """The document's ``ini`` block that starts ``# fleet.ini``: the inventory it uses."""
    found = re.search(r"```ini\n(# fleet\.ini.*?)```", path.read_text(), re.S)
    assert found, f"{path}: no ini block starting '# fleet.ini'"
    return found.group(1)


def _dockerfile_block(path: Path) -> str:
    text = path.read_text()
    found = re.search(r"```Dockerfile\n(.*?)```", text, re.S)
    assert found, f"{path}: no Dockerfile block"
    return found.group(1)


# --- running -------------------------------------------------------------------------------

def _script(setup: Setup, blocks: list[Block]) -> tuple[str, list[tuple[Block | None, str]]]:
    """One bash script: every command, then a check that writes which one failed."""
    steps: list[tuple[Block | None, str]] = [(None, c) for c in setup.commands]
    steps += [(b, c.text) for b in blocks if b.skip is None for c in b.commands]
    parts = ["set +e"]
    for n, (_block, text) in enumerate(steps):
        for name, real in setup.names.items():
            text = text.replace(name, real)
        parts.append(f"{text}\n__rc=$?; if [ $__rc -ne 0 ]; then "
                     f"echo {n} $__rc > \"$DOCS_TEST_STATUS\"; exit 0; fi")
    return "\n".join(parts) + "\n", steps


def _run(doc: str, world: World) -> None:
    blocks = parse(REPO / doc)
    setup = setup_for(doc, world)
    work = world.scratch / doc.replace("/", "-").removesuffix(".md")
    work.mkdir(parents=True, exist_ok=True)
    for name, text in setup.files.items():
        for old, new in setup.names.items():
            text = text.replace(old, new)
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    script, steps = _script(setup, blocks)
    env = {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(work), "LANG": "C.UTF-8", "TERM": "dumb",
        "NESTBUILD_CACHE": os.environ.get("NESTBUILD_CACHE", str(world.scratch / "cache")),
        "NESTBUILD_PASSWORD": "docs",
        "SSL_CERT_FILE": str(world.registry.ca_cert),
        "REGISTRY_AUTH_FILE": str(world.registry.auth_file),
        "XDG_RUNTIME_DIR": str(work),
        **setup.env,
    }
    status_file = world.scratch / f"{doc.replace('/', '-')}.status"
    status_file.unlink(missing_ok=True)
    env["DOCS_TEST_STATUS"] = str(status_file)
    try:
        proc = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True,
                              text=True, timeout=900, check=False)
    finally:
        for image in setup.cleanup:
            buildah.remove_image(image)
    status = status_file.read_text().split() if status_file.exists() else []
    if not status:
        return
    n, rc = int(status[0]), status[1]
    block, text = steps[n]
    where = (f"{doc}, block at line {block.line}" if block is not None
             else f"{doc}'s set-up (tests/integration/test_docs.py)")
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
    pytest.fail(f"{where}: `{text}` exited {rc}\n{tail}", pytrace=False)


@pytest.fixture(scope="session")
def world(tls_registry: Registry, build_image: BuildImage,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    baseimage.build_base("mini")  # the documented default name (reproducible: same id)
    yield World(tls_registry, MINI, build_image, tmp_path_factory.mktemp("docs"))


def _runnable(path: Path) -> bool:
    return any(b.skip is None and b.commands for b in parse(path))


@pytest.mark.ostree
@pytest.mark.parametrize("doc", [str(p.relative_to(REPO)) for p in DOCUMENTS if _runnable(p)])
def test_documented_commands_run(doc: str, world: World) -> None:
    _run(doc, world)


def test_not_run_blocks_say_why() -> None:
    """Every block that does not run says why; the list is the test's output (-rA)."""
    skipped = [(b, b.skip) for p in DOCUMENTS for b in parse(p) if b.skip is not None]
    assert all(why and why.strip() for _b, why in skipped)
    for block, why in skipped:
        print(f"not run: {block.doc}:{block.line}: {why}")
    readme = [b for b in parse(REPO / "README.md") if b.skip is not None]
    assert {c.text for b in readme for c in b.commands} >= {"./scripts/demo", "./scripts/test"}


def test_every_command_block_is_found() -> None:
    """The parser sees what a reader sees: every ``$`` line of a console block, no output
    line taken for a command, continuations joined."""
    blocks = {b.line: b for b in parse(REPO / "docs" / "signing.md")}
    first = blocks[min(blocks)]
    assert [c.text.split()[1] for c in first.commands[1:]] == [
        "keygen", "sign", "verify", "attest"]
    assert first.commands[-1].text.endswith("--type https://spdx.dev/Document")


def test_completion_script_is_valid_bash_and_completes(tmp_path: Path) -> None:
    script = tmp_path / "nestbuild.bash"
    out = subprocess.run([str(BIN / "nestbuild"), "completion", "bash"], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    script.write_text(out)
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=60)
    probe = (f"source {shlex.quote(str(script))}\n"
             "f=$(complete -p nestbuild | sed -E 's/.*-F ([^ ]+).*/\\1/')\n"
             "COMP_WORDS=(nestbuild node st); COMP_CWORD=2; $f; echo \"${COMPREPLY[@]}\"\n"
             "COMP_WORDS=(nestbuild reb); COMP_CWORD=1; $f; echo \"${COMPREPLY[@]}\"\n"
             "COMP_WORDS=(nestbuild validate --pre); COMP_CWORD=2; $f; "
             "echo \"${COMPREPLY[@]}\"\n")
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True,
                          timeout=60)
    assert done.stdout.split("\n")[:3] == ["status", "rebase", "--preset"]



def test_the_starter_builds_clean_and_quietly(world: World) -> None:
    """``nestbuild init``'s first build has nothing to warn about; ``-q`` prints the verdict
    line only; the report says the build pinned the base (the user gave no --base)."""
    work = world.scratch / "starter"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    tag = f"localhost/nestbuild-test/starter:{uuid.uuid4().hex[:8]}"

    def nb(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "nestbuild"), *args], cwd=work, env=env, text=True,
                              capture_output=True, timeout=600, check=True)

    work.mkdir()
    nb("init", "node")
    work = work / "node"
    try:
        quiet = nb("build", "-q", "-t", tag)
        assert quiet.stdout.splitlines() == ["PASSED: 0 error(s), 0 warning(s), 3 change(s)"]
        assert quiet.stderr == ""
        table = nb("validate", tag, "--base", MINI).stdout
        assert "given with --base" in table
        full = nb("build", "-t", tag).stdout
        assert "pinned by nestbuild build" in full and "--base" not in full
    finally:
        buildah.remove_image(tag)


# --- JSON output against its documented schema ----------------------------------------------

SCHEMAS = REPO / "docs" / "reference" / "schemas"


def schema_for(command: str) -> dict[str, object]:
    """docs/reference/schemas/COMMAND.schema.json (``node status`` -> node-status)."""
    import json

    loaded: dict[str, object] = json.loads(
        (SCHEMAS / f"{command.replace(' ', '-')}.schema.json").read_text())
    return loaded


def test_json_outputs_match_their_schemas(world: World) -> None:
    """Every ``--format json`` this machine can produce, from real runs, checked against the
    schema docs/reference/ documents (boot needs qemu and a bootable base: not here)."""
    import json

    import jsonschema

    reg = world.registry.host
    work = world.scratch / "json"
    work.mkdir()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "NESTBUILD_PASSWORD": "docs", "SSL_CERT_FILE": str(world.registry.ca_cert),
           "REGISTRY_AUTH_FILE": str(world.registry.auth_file)}
    unique = uuid.uuid4().hex[:8]
    local = {v: f"localhost/nestbuild-test/docs-json:{v}-{unique}" for v in ("v1", "v2")}
    outputs: dict[str, list[object]] = {}

    def nb(command: str, *args: str) -> None:
        argv = [str(BIN / "nestbuild"), *command.split(), *args, "--format", "json"]
        proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True,
                              timeout=600, check=False)
        assert proc.returncode == 0, f"{' '.join(argv[1:])}: {proc.stderr[-2000:]}"
        outputs.setdefault(command, []).append(json.loads(proc.stdout))

    subprocess.run([str(BIN / "nestbuild"), "keygen"], cwd=work, env=env, check=True,
                   capture_output=True, timeout=120)
    (work / "predicate.json").write_text('{"checked": true}\n')
    try:
        for v, tag in local.items():
            (work / v).mkdir()
            (work / v / "Containerfile").write_text(f"FROM {MINI}\nENV VERSION={v}\n")
            nb("build", "-t", tag, "--trust", f"{reg}/json/node", "--trust-key", "cosign.pub",
               v)
            nb("push", tag, f"{reg}/json/node:{v}", "--sign-key", "cosign.key")
        nb("validate", local["v1"])
        nb("diff", MINI, local["v1"])
        nb("changelog", local["v1"], local["v2"])
        nb("rules")
        nb("base list")
        nb("base build", "mini")
        remote = f"docker://{reg}/json/node:v1"
        nb("sign", remote, "--key", "cosign.key")
        nb("attest", remote, "--key", "cosign.key", "--predicate", "predicate.json",
           "--type", "https://example.com/checked/v1")
        nb("verify", remote, "--key", "cosign.pub")
        nb("tree", remote)
        nb("inspect", remote)
        nb("pull", remote, "oci:./pulled:v1")
        nb("node trust", f"{reg}/json/node", "--key", "cosign.pub", "--out", "trust")
        nb("rebase", remote, "--via", "ostree", "--sysroot", "sysroot", "--dry-run",
           "--trust", "trust")
        nb("rebase", remote, "--via", "ostree", "--sysroot", "sysroot", "--trust", "trust")
        nb("rebase", f"docker://{reg}/json/node:v2", "--via", "ostree", "--sysroot", "sysroot")
        nb("node status", "--sysroot", "sysroot")
        nb("node rollback", "--sysroot", "sysroot")
    finally:
        for tag in local.values():
            buildah.remove_image(tag)
        subprocess.run(["chattr", "-R", "-i", str(work / "sysroot")], check=False,
                       stderr=subprocess.DEVNULL)
    if os.environ.get("NESTBUILD_JSON_SAMPLES"):
        Path(os.environ["NESTBUILD_JSON_SAMPLES"]).write_text(json.dumps(outputs, indent=1))
    for command, docs in outputs.items():
        schema = schema_for(command)
        for doc in docs:
            jsonschema.validate(doc, schema)
