"""`nestbuild node trust|status|rollback`."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from nestbuild.signing import keys
from tests.fixtures.cli import nestbuild as nb


def test_trust_files_extend_policy_and_rotate_keys(tmp_path: Path) -> None:
    k1, k2 = tmp_path / "a.pub", tmp_path / "b.pub"
    k1.write_bytes(keys.public_pem(keys.generate()))
    k2.write_bytes(keys.public_pem(keys.generate()))
    out = tmp_path / "root"
    (out / "etc/containers").mkdir(parents=True)
    (out / "etc/containers/policy.json").write_text(json.dumps(
        {"default": [{"type": "insecureAcceptAnything"}],
         "transports": {"docker": {"other.example/x": [{"type": "reject"}]}}}))
    auth = tmp_path / "auth.json"
    auth.write_text('{"auths": {"reg.example:5000": {"auth": "dTpw"}}}')
    r = nb("node", "trust", "reg.example:5000/nodes/base", "--key", str(k1), "--key", str(k2),
           "--out", str(out), "--authfile", str(auth))
    assert r.returncode == 0, r.stderr
    policy = json.loads((out / "etc/containers/policy.json").read_text())
    assert policy["default"] == [{"type": "reject"}]
    assert policy["transports"]["docker"]["other.example/x"] == [{"type": "reject"}]
    (req,) = policy["transports"]["docker"]["reg.example:5000/nodes/base"]
    assert req["type"] == "sigstoreSigned"
    assert req["signedIdentity"] == {"type": "matchRepository"}
    assert len(req["keyPaths"]) == 2
    for p in req["keyPaths"]:
        assert (out / p.lstrip("/")).read_bytes() in (k1.read_bytes(), k2.read_bytes())
    regd = (out / "etc/containers/registries.d/reg.example-5000-nodes-base.yaml").read_text()
    assert "use-sigstore-attachments: true" in regd
    assert stat.S_IMODE((out / "etc/ostree/auth.json").stat().st_mode) == 0o600


def test_trust_refuses_bad_keys_and_references(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    r = nb("node", "trust", "reg.example/nodes", "--key", str(bad), "--out", str(tmp_path))
    assert r.returncode == 2 and "bad.pub" in r.stderr
    good = tmp_path / "good.pub"
    good.write_bytes(keys.public_pem(keys.generate()))
    r = nb("node", "trust", "docker://reg.example/nodes:v1", "--key", str(good))
    assert r.returncode == 2 and "REGISTRY/REPO" in r.stderr


def test_status_of_a_non_sysroot_is_a_clear_error(tmp_path: Path) -> None:
    r = nb("node", "status", "--sysroot", str(tmp_path))
    assert r.returncode == 2 and "not an ostree sysroot" in r.stderr
