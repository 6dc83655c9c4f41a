"""The Kubernetes engine's Plans: valid for system-upgrade-controller's CRD, and the step they run.

No API server runs here, so each emitted Plan is checked against the Plan CRD's own
openAPIV3Schema (upstream's generated CRD, kept in tests/data/reference), made strict: a field
the schema does not know is an error here, because the API server would silently prune it and
the Plan would run without it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from nestbuild.errors import UsageError
from nestbuild.fleet import kubernetes as kube
from nestbuild.fleet.kubernetes import KubePlanSpec, concurrency, plans, write_plans

CRD = (Path(__file__).parents[1] / "data/reference/system-upgrade-controller"
       / "upgrade.cattle.io_plans.yaml")
DIGEST = "sha256:" + "0123456789abcdef" * 4
IMAGE = f"registry.example.com/nodes/os@{DIGEST}"
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def _strict(schema: Any) -> Any:
    """The structural schema with unknown fields refused (the API server prunes them)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _validator() -> jsonschema.Draft7Validator:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    # OpenAPI v3's schema objects are JSON Schema draft 4/5 with extensions (x-kubernetes-*,
    # format int64, which draft 7 ignores); nothing in this CRD needs more than draft 7.
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


VALIDATOR = _validator()


def errors(plan: Mapping[str, Any]) -> list[str]:
    """Why the API server would refuse ``plan`` (or prune part of it); empty if it is valid."""
    found = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
             for e in VALIDATOR.iter_errors(plan)]
    meta = plan.get("metadata", {})
    if plan.get("apiVersion") != "upgrade.cattle.io/v1" or plan.get("kind") != "Plan":
        found.append("not an upgrade.cattle.io/v1 Plan")
    # a Plan's name is also a label key's name part in SUC (plan.upgrade.cattle.io/NAME)
    for key in ("name", "namespace"):
        value = meta.get(key, "")
        if not (DNS_LABEL.fullmatch(value) and len(value) <= 63):
            found.append(f"metadata/{key}: {value!r} is not a DNS label")
    version = plan.get("spec", {}).get("version", "")
    if not (version and LABEL_VALUE.fullmatch(version) and len(version) <= 63):
        found.append(f"spec/version: {version!r} is not a label value (SUC labels Jobs with it)")
    return found


SPECS = {
    "default": KubePlanSpec(image=IMAGE),
    "no canary": KubePlanSpec(image=IMAGE, canary=0),
    "everything": KubePlanSpec(
        image=f"docker://{IMAGE}", name="os-2024", namespace="upgrades", service_account="suc",
        node_selector={"example.com/pool": "edge", "tier": "a"}, canary=2, max_unavailable="25%",
        node_count=40, drain=True, drain_timeout=90, drain_force=True, soak=1800, via="rpm-ostree",
        health_cmds=("systemctl is-active kubelet", "test \"$(cat /etc/role)\" = edge"),
        health_urls=("http://127.0.0.1:10248/healthz",), health_timeout=600, job_deadline=7200,
        upgrade_image="quay.io/example/chroot@sha256:" + "f" * 64,
        kubectl_image="registry.example.com/mirror/kubectl:v1.31.0"),
    "every node": KubePlanSpec(image=IMAGE, node_selector={}, canary=1),
}


@pytest.mark.parametrize("name", SPECS)
def test_every_plan_is_valid_for_the_crd(name: str) -> None:
    made = plans(SPECS[name])
    assert made
    for plan in made:
        assert errors(plan) == []


def test_schema_check_can_fail() -> None:
    """Each change breaks the CRD's schema (or would be pruned), and the check says so."""
    (plan, *_) = plans(SPECS["everything"])
    breaks = {
        "concurrency as text": lambda s: s.update(concurrency="2"),
        "no upgrade": lambda s: s.pop("upgrade"),
        "upgrade without image": lambda s: s["upgrade"].pop("image"),
        "args not strings": lambda s: s["upgrade"].update(args=["nestbuild", 3]),
        "drain timeout neither int nor string": lambda s: s["drain"].update(timeout=True),
        "unknown field, pruned by the API server": lambda s: s.update(soak="30m"),
        "unknown upgrade field": lambda s: s["upgrade"].update(cmd=["x"]),
        "selector operator missing": lambda s: s["nodeSelector"].update(
            matchExpressions=[{"key": "a"}]),
        "window day not a day": lambda s: s.update(window={"days": ["someday"]}),
        "label value not a string": lambda s: s.update(postCompleteLabels={"a": 1}),
    }
    for why, change in breaks.items():
        broken = copy.deepcopy(plan)
        change(broken["spec"])
        assert errors(broken), why
    bad_name = copy.deepcopy(plan)
    bad_name["metadata"]["name"] = "Nest_Build"
    assert errors(bad_name)


def test_plans_roll_the_target_by_digest_with_the_step_on_the_host() -> None:
    canary, fleet = plans(SPECS["default"])
    for plan in (canary, fleet):
        spec = plan["spec"]
        assert spec["version"] == "sha256-" + DIGEST.removeprefix("sha256:")[:56]
        assert spec["cordon"] is True and "drain" not in spec
        assert spec["serviceAccountName"] == "system-upgrade"
        assert plan["metadata"]["namespace"] == "system-upgrade"
        up = spec["upgrade"]
        assert up["image"] == "docker.io/library/busybox:1.36"
        assert up["command"] == ["chroot", "/host"]
        assert up["args"] == ["nestbuild", "node", "upgrade", "--via=bootc",
                              "--rollback-on-failure", "--reboot=self", "--", IMAGE]
    assert [p["metadata"]["name"] for p in (canary, fleet)] == ["nestbuild-canary",
                                                                "nestbuild-fleet"]


def test_a_new_digest_is_a_new_version() -> None:
    other = IMAGE.replace(DIGEST, "sha256:" + "e" * 64)
    assert (plans(KubePlanSpec(image=IMAGE))[0]["spec"]["version"]
            != plans(KubePlanSpec(image=other))[0]["spec"]["version"])


def _expand(arg: str, env: Mapping[str, str]) -> str:
    """Kubernetes' expansion of a container's command and args, as the CRD's own description
    of it says: ``$(NAME)`` of a defined variable is replaced, ``$$`` becomes ``$``, anything
    else is kept."""
    out, i = [], 0
    while i < len(arg):
        if arg[i] == "$" and i + 1 < len(arg):
            nxt = arg[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = arg.find(")", i + 2)
                if end != -1 and arg[i + 2:end] in env:
                    out.append(env[arg[i + 2:end]])
                    i = end + 1
                    continue
        out.append(arg[i])
        i += 1
    return "".join(out)


def test_health_commands_reach_the_step_unchanged() -> None:
    """No shell: each command is one argument; Kubernetes' $(VAR) expansion is escaped."""
    env = {"SYSTEM_UPGRADE_NODE_NAME": "node-1", "HOME": "/root"}
    hostile = ("echo $(SYSTEM_UPGRADE_NODE_NAME) $$ $HOME '$(HOME)'; rm -rf \"$x\"",
               "a\nb", "--health-url", "test \"$(cat /etc/role)\" = edge")
    spec = KubePlanSpec(image=IMAGE, health_cmds=hostile, health_urls=("http://h/$(HOME)",),
                        health_timeout=59.5)
    want = ["nestbuild", "node", "upgrade", "--via=bootc", "--rollback-on-failure",
            "--reboot=self", *[f"--health-cmd={cmd}" for cmd in hostile],
            "--health-url=http://h/$(HOME)", "--health-timeout=60s", "--", IMAGE]
    assert kube.step_argv(spec, IMAGE) == want
    for plan in plans(spec):
        args = plan["spec"]["upgrade"]["args"]
        assert [_expand(a, env) for a in args] == want
    # unescaped, Kubernetes would have rewritten the first command
    assert _expand(hostile[0], env) != hostile[0]


def _matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A Kubernetes LabelSelector against a node's labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for req in selector.get("matchExpressions", []):
        key, op, values = req["key"], req["operator"], req.get("values", [])
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": key not in labels or labels[key] not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def test_canary_nodes_go_first_and_open_the_gate_for_the_rest() -> None:
    spec = KubePlanSpec(image=IMAGE, canary=2, soak=300, max_unavailable=3, job_deadline=1000)
    canary, fleet = plans(spec)
    nodes = {
        "canary": {"nestbuild.io/managed": "true", "nestbuild.io/canary": "true"},
        "worker": {"nestbuild.io/managed": "true"},
        "not-canary": {"nestbuild.io/managed": "true", "nestbuild.io/canary": "false"},
        "unmanaged": {"nestbuild.io/canary": "true"},
        "other": {"kubernetes.io/os": "linux"},
    }
    chosen = {name: [p["metadata"]["name"] for p in (canary, fleet)
                     if _matches(p["spec"]["nodeSelector"], labels)]
              for name, labels in nodes.items()}
    assert chosen == {"canary": ["nestbuild-canary"], "worker": ["nestbuild-fleet"],
                      "not-canary": ["nestbuild-fleet"], "unmanaged": [], "other": []}
    assert canary["spec"]["concurrency"] == 2 and fleet["spec"]["concurrency"] == 3
    # soak: SUC holds a node's slot (and its done label) this long after its Job completed
    assert canary["spec"]["postCompleteDelay"] == fleet["spec"]["postCompleteDelay"] == "300s"
    # the gate: the rest waits, before cordoning, until every canary node carries the label
    # SUC sets after the canary's soak, with this rollout's version
    version = canary["spec"]["version"]
    assert canary["spec"]["postCompleteLabels"] == {"nestbuild.io/canary-passed": version}
    assert "prepare" not in canary["spec"]
    prepare = fleet["spec"]["prepare"]
    assert prepare["image"] == "docker.io/rancher/kubectl:v1.30.3"
    assert prepare["args"] == [
        "wait", "node", "--selector", "nestbuild.io/managed=true,nestbuild.io/canary=true",
        "--for=jsonpath={.metadata.labels.nestbuild\\.io/canary-passed}=" + version,
        "--timeout=1300s"]
    # a canary Job may take its whole deadline, then soak; then the fleet's own step
    assert canary["spec"]["jobActiveDeadlineSecs"] == 1000
    assert fleet["spec"]["jobActiveDeadlineSecs"] == 2300


def test_without_canary_one_plan_takes_every_selected_node() -> None:
    (fleet,) = plans(KubePlanSpec(image=IMAGE, canary=0, node_selector={}))
    assert fleet["spec"]["nodeSelector"] == {}  # empty: every node (a missing one: none)
    assert "prepare" not in fleet["spec"] and "postCompleteLabels" not in fleet["spec"]
    assert _matches(fleet["spec"]["nodeSelector"], {"nestbuild.io/canary": "true"})


def test_drain_maps_onto_kubectl_drain() -> None:
    (fleet,) = plans(KubePlanSpec(image=IMAGE, canary=0, drain=True, drain_timeout=120.2,
                                  drain_force=True))
    assert fleet["spec"]["drain"] == {"ignoreDaemonSets": True, "deleteEmptydirData": True,
                                      "force": True, "timeout": "121s"}


@pytest.mark.parametrize(("value", "nodes", "count"), [
    (1, None, 1), ("3", None, 3), ("25%", 40, 10), ("25%", 3, 1), ("10%", 19, 1),
    ("100%", 7, 7), (" 2 ", None, 2)])
def test_max_unavailable_becomes_a_count(value: str | int, nodes: int | None, count: int) -> None:
    assert concurrency(value, nodes) == count


@pytest.mark.parametrize(("value", "nodes"), [
    ("0", None), ("-1", None), ("x", None), ("25%", None), ("0%", 10), ("101%", 10),
    ("1.5", None), ("%", 10)])
def test_max_unavailable_refuses_nonsense(value: str, nodes: int | None) -> None:
    with pytest.raises(UsageError, match="--max-unavailable"):
        concurrency(value, nodes)


@pytest.mark.parametrize(("change", "says"), [
    ({"image": "registry.example.com/nodes/os:1.0"}, "by digest"),
    ({"image": "registry.example.com/nodes/os:1.0@" + DIGEST}, "not both"),
    ({"image": "not an image"}, "not a valid image reference"),
    ({"name": "Nestbuild"}, "plan name"),
    ({"name": "x" * 57}, "plan name"),
    ({"namespace": "kube_system"}, "namespace"),
    ({"service_account": "a b"}, "service account"),
    ({"node_selector": {"bad key!": "x"}}, "label key"),
    ({"node_selector": {"pool": "a b"}}, "label value"),
    ({"node_selector": {"pool": "v" * 64}}, "label value"),
    ({"node_selector": {"nestbuild.io/canary": "true"}}, "canary label"),
    ({"canary": -1}, "--canary"),
    ({"via": "ostree"}, "--via"),
    ({"soak": -5}, "soak"),
    ({"job_deadline": 0}, "job deadline"),
    ({"health_timeout": 4000}, "health timeout"),
    ({"upgrade_image": "docker.io/library/busybox"}, "upgrade image"),
    ({"kubectl_image": "rancher/kubectl"}, "kubectl image"),
])
def test_hostile_input_is_refused_in_one_line(change: dict[str, Any], says: str) -> None:
    spec = KubePlanSpec(**{"image": IMAGE, **change})
    with pytest.raises(UsageError, match=re.escape(says)) as caught:
        plans(spec)
    assert "\n" not in str(caught.value)


def test_written_plans_read_back_as_the_plans(tmp_path: Path) -> None:
    made = plans(SPECS["everything"])
    out = tmp_path / "plans.yaml"
    out.write_text("old")
    write_plans(made, out)
    assert list(yaml.safe_load_all(out.read_text())) == made
    assert out.read_text().count("\n---\n") + out.read_text().startswith("---\n") == 2
    assert [p.name for p in tmp_path.iterdir()] == ["plans.yaml"]  # no temporary file left


def test_writing_into_a_missing_directory_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such directory"):
        write_plans(plans(SPECS["default"]), tmp_path / "nope" / "plans.yaml")
    assert not (tmp_path / "nope").exists()


def test_the_step_is_what_nestbuild_node_upgrade_accepts() -> None:
    """The Plan's arguments, after chroot and Kubernetes' expansion, parse as the real command
    line, to the values asked for."""
    from nestbuild._cli.main import build_parser

    spec = KubePlanSpec(image=IMAGE, via="rpm-ostree",
                        health_cmds=("a $(B)", "--x", "--reboot=none", "-h"),
                        health_urls=("http://127.0.0.1:8080/ok",), health_timeout=90)
    for plan in plans(spec):
        upgrade = plan["spec"]["upgrade"]
        argv = [_expand(a, {"B": "expanded"}) for a in upgrade["args"]]
        assert upgrade["command"] == ["chroot", "/host"] and argv[0] == "nestbuild"
        args = build_parser().parse_args(argv[1:])
        assert (args.command, args.image, args.via) == ("node", IMAGE, "rpm-ostree")
        assert args.health_cmd == ["a $(B)", "--x", "--reboot=none", "-h"]
        assert args.health_url == ["http://127.0.0.1:8080/ok"]
        assert (args.health_timeout, args.rollback_on_failure, args.reboot) == (90, True, "self")
