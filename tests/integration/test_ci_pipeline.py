"""docs/ci/: the command sequence the GitHub Actions workflow and the GitLab CI job run
(docs/ci/pipeline.sh), run for real against a TLS registry with htpasswd auth; and the two CI
files, which must call that very script so they cannot drift from what is tested here."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nestbuild._tools import buildah
from nestbuild.building.baseimage import BuiltBase
from tests.fixtures.images import EXAMPLES, REPO
from tests.fixtures.registry import Registry

CI = REPO / "docs" / "ci"
SCRIPT = CI / "pipeline.sh"
CI_FILES = [CI / "github-actions.yml", CI / "gitlab-ci.yml"]
BIN = Path(sys.executable).parent  # the venv's nestbuild, as a CI job's PATH would have it


def _nestbuild(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "nestbuild"), *args], env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def _clean_env() -> dict[str, str]:
    """The test's environment without anything that could supply credentials or a passphrase
    behind the script's back."""
    drop = {"NESTBUILD_PASSWORD", "COSIGN_PASSWORD", "NESTBUILD_REGISTRY_PASSWORD",
            "REGISTRY_AUTH_FILE", "REGISTRY_PASSWORD", "SIGNING_KEY_FILE"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    return env


class Run:
    """One CI job's inputs: a fresh repository and tag, a key pair made by nestbuild keygen."""

    def __init__(self, reg: Registry, base: str, tmp: Path) -> None:
        assert reg.username and reg.password
        self.reg, self.base, self.tmp = reg, base, tmp
        self.image = f"nestbuild-test/ci-{uuid.uuid4().hex[:8]}"
        self.tag = f"ci-{uuid.uuid4().hex[:8]}"
        self.passphrase = "ci-pass-" + secrets.token_urlsafe(16)
        self.out = tmp / "out"
        self.key = tmp / "keys" / "cosign.key"
        self.pub = tmp / "keys" / "cosign.pub"
        self.local = f"localhost/{self.image}:{self.tag}"
        self.key.parent.mkdir()
        keygen = _nestbuild("keygen", "--output-prefix", str(tmp / "keys" / "cosign"),
                            env={**_clean_env(), "NESTBUILD_PASSWORD": self.passphrase})
        assert keygen.returncode == 0, keygen.stderr

    def env(self, example: str) -> dict[str, str]:
        """What the CI files export before they call pipeline.sh."""
        assert self.reg.username and self.reg.password
        return {
            **_clean_env(),
            "REGISTRY": self.reg.host,
            "IMAGE": self.image,
            "TAG": self.tag,
            "REGISTRY_USER": self.reg.username,
            "REGISTRY_PASSWORD": self.reg.password,
            "NESTBUILD_PASSWORD": self.passphrase,
            "SIGNING_KEY_FILE": str(self.key),
            "PUBLIC_KEY_FILE": str(self.pub),
            "CONTEXT": str(EXAMPLES / example),
            "OUT_DIR": str(self.out),
            "NESTBUILD_BUILD_FLAGS": f"--build-arg BASE={self.base}",
            "NESTBUILD_REGISTRY_FLAGS": f"--cert-dir {self.reg.cert_dir}",
        }

    def pipeline(self, example: str, **override: str) -> subprocess.CompletedProcess[str]:
        """Run pipeline.sh as the CI files do (``override``: changed inputs)."""
        return subprocess.run(["bash", str(SCRIPT)], env={**self.env(example), **override},
                              cwd=self.tmp,
                              capture_output=True, text=True, timeout=900, check=False)

    def assert_no_secret_in(self, log: str) -> None:
        """No secret in the job log, in any form a tool might print it."""
        assert self.reg.password is not None
        basic = base64.b64encode(f"{self.reg.username}:{self.reg.password}".encode()).decode()
        for secret in (self.reg.password, self.passphrase, basic):
            assert secret not in log


@pytest.fixture
def ci_run(tls_registry: Registry, mini_base: BuiltBase, tmp_path: Path) -> Iterator[Run]:
    run = Run(tls_registry, mini_base.tag, tmp_path)
    yield run
    buildah.remove_image(run.local)


def test_pipeline_builds_signs_pushes_and_verifies(ci_run: Run, tls_registry: Registry,
                                                    tmp_path: Path) -> None:
    r, reg = ci_run, tls_registry
    assert r.key.stat().st_mode & 0o077 == 0
    proc = r.pipeline("etc-config")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    r.assert_no_secret_in(log)

    # What was pushed is what the registry serves for the tag, and it is what the job verified.
    digest = (r.out / "digest.txt").read_text().strip()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), digest
    served = reg.client().get_manifest(r.image, r.tag)
    assert served is not None
    assert "sha256:" + hashlib.sha256(served[0]).hexdigest() == digest
    assert reg.client().resolve(r.image, r.tag) == digest  # Docker-Content-Digest
    assert proc.stdout.strip().splitlines()[-1] == f"{reg.host}/{r.image}@{digest}"

    build = json.loads((r.out / "build.json").read_text())
    assert build["passed"] is True and build["validation"]["passed"] is True, build
    pushed = json.loads((r.out / "push.json").read_text())
    assert pushed["digest"] == digest
    assert pushed["signatures"] and pushed["attestations"], pushed

    # The login's credentials did not outlive the job.
    [stored] = re.findall(r"credentials in (\S+)\)", proc.stdout)
    assert not Path(stored).exists()

    # A node's check, independently of the script: the signature verifies with the public key.
    authfile = tmp_path / "verify-auth.json"
    authfile.write_text(json.dumps(reg.auth_json()))
    verify = _nestbuild("verify", f"docker://{reg.host}/{r.image}:{r.tag}", "--key", str(r.pub),
                        "--cert-dir", str(reg.cert_dir), "--authfile", str(authfile),
                        env=_clean_env())
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_pipeline_fails_the_job_on_a_refused_image(ci_run: Run, tls_registry: Registry) -> None:
    """usr-binary changes /usr: build's validation fails with exit 1, so the job does, and
    nothing reaches the registry."""
    r = ci_run
    proc = r.pipeline("usr-binary")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log
    r.assert_no_secret_in(log)
    assert json.loads((r.out / "build.json").read_text())["passed"] is False
    assert not (r.out / "digest.txt").exists()
    assert tls_registry.client().get_manifest(r.image, r.tag) is None


def test_pipeline_refuses_missing_secrets_without_printing_them(tmp_path: Path) -> None:
    """A job whose secret is not set stops at once (exit 2, a broken job) and says which."""
    env = {**_clean_env(), "REGISTRY": "127.0.0.1:1", "IMAGE": "x/y", "TAG": "t",
           "REGISTRY_USER": "u", "REGISTRY_PASSWORD": "never-shown-" + secrets.token_hex(8)}
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "NESTBUILD_PASSWORD is not set" in proc.stderr
    assert env["REGISTRY_PASSWORD"] not in proc.stdout + proc.stderr


def _strings(node: Any) -> Iterator[str]:
    """Every key and scalar of a YAML document, as text."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)
    elif node is not None:
        yield str(node)


def _required_inputs() -> list[str]:
    """The variables pipeline.sh refuses to run without (its ``require NAME...`` line)."""
    [line] = re.findall(r"^require (.+)$", SCRIPT.read_text(), flags=re.MULTILINE)
    names = line.split()
    assert len(names) >= 7, names
    return names


def _commands(doc: dict[Any, Any]) -> list[str]:
    """The shell lines a CI file runs: GitHub steps' ``run``, GitLab jobs' script lists."""
    lines: list[str] = []
    for job in (doc.get("jobs") or {}).values():  # GitHub Actions
        lines += [step["run"] for step in job.get("steps", []) if "run" in step]
    for job in doc.values():  # GitLab CI
        if isinstance(job, dict):
            for part in ("before_script", "script", "after_script"):
                lines += [str(line) for line in job.get(part, [])]
    return lines


@pytest.mark.parametrize("path", CI_FILES, ids=lambda p: p.name)
def test_ci_files_run_the_tested_script(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    commands = _commands(doc)
    assert [c for c in commands if c.strip() == "bash docs/ci/pipeline.sh"], commands
    # Every input the script requires is provided by the CI file, by name.
    text = "\n".join(_strings(doc))
    missing = [name for name in _required_inputs() if not re.search(rf"\b{name}\b", text)]
    assert not missing, f"{path.name} does not set {missing}"
    assert not any(re.search(r"set -\w*x", c) for c in commands), "set -x would print secrets"


def test_github_workflow_takes_the_key_and_passphrase_from_secrets() -> None:
    doc = yaml.safe_load(CI_FILES[0].read_text())
    on = doc.get("on", doc.get(True))  # YAML 1.1 reads the bare key `on` as true
    assert on and "push" in on
    steps = [s for job in doc["jobs"].values() for s in job["steps"]]
    envs = {k: v for s in steps for k, v in (s.get("env") or {}).items()}
    assert envs["COSIGN_KEY"] == "${{ secrets.COSIGN_KEY }}"
    assert envs["NESTBUILD_PASSWORD"] == "${{ secrets.COSIGN_PASSWORD }}"
    assert envs["REGISTRY_PASSWORD"] == "${{ secrets.REGISTRY_PASSWORD }}"
    # Secrets reach the shell through env:, never pasted into the script text.
    assert not [s for s in steps if "secrets." in s.get("run", "")]


def test_gitlab_job_uses_a_file_variable_for_the_key() -> None:
    doc = yaml.safe_load(CI_FILES[1].read_text())
    script = doc["node-image"]["script"]
    assert 'export SIGNING_KEY_FILE="$COSIGN_KEY"' in script
    assert 'export NESTBUILD_PASSWORD="$COSIGN_PASSWORD"' in script


def test_the_readme_test_command_collects_this_file() -> None:
    """./scripts/test runs pytest in the repository root, whose testpaths is tests/."""
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert config["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]
    assert Path(__file__).resolve().parent == REPO / "tests" / "integration"
    assert "pytest" in (REPO / "scripts" / "test").read_text()


def test_pipeline_fails_the_job_on_a_wrong_passphrase(ci_run: Run,
                                                      tls_registry: Registry) -> None:
    """A passphrase secret that does not open the key is a broken job (exit 2)."""
    r = ci_run
    wrong = "not-" + r.passphrase
    proc = r.pipeline("etc-config", NESTBUILD_PASSWORD=wrong)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2, log
    assert "wrong passphrase" in proc.stderr
    r.assert_no_secret_in(log)
    assert wrong not in log
    assert not (r.out / "digest.txt").exists()
    # Nothing was pushed: the key is opened before any upload, so no tag moves.
    assert tls_registry.client().get_manifest(r.image, r.tag) is None


def test_pipeline_fails_the_job_when_the_key_is_not_the_trusted_one(ci_run: Run,
                                                                    tmp_path: Path) -> None:
    """The signing key in the CI secret does not match the committed cosign.pub: verify
    fails with exit 1, in the job rather than on the nodes."""
    r = ci_run
    other = tmp_path / "other"
    keygen = _nestbuild("keygen", "--output-prefix", str(other),
                        env={**_clean_env(), "NESTBUILD_PASSWORD": "other"})
    assert keygen.returncode == 0, keygen.stderr
    proc = r.pipeline("etc-config", PUBLIC_KEY_FILE=f"{other}.pub")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log
    assert (r.out / "digest.txt").exists()  # pushed and signed, with the wrong key
    r.assert_no_secret_in(log)
