"""The Kubernetes engine: a rollout as system-upgrade-controller Plans.

system-upgrade-controller (SUC, ``upgrade.cattle.io/v1`` ``Plan``) turns a Plan into one Job
per selected node, ``concurrency`` nodes at a time, each Job cordoning (or draining) its node
and running the upgrade container with the host's root at ``/host``. nestbuild's Plans run the
same per-node step as every other engine, on the host:

    chroot /host nestbuild node upgrade --via=V --rollback-on-failure --reboot=self
        [--health-cmd=CMD]... [--health-url=URL]... [--health-timeout=Ns] -- REPO@DIGEST

so nestbuild must be installed in the node image. The step reboots the node itself; the Job's
pod dies with the reboot and the Job starts it again, and the second run (the step is
idempotent) finds the target booted and runs the health gate. SUC labels a node done only when
its Job completed, after ``postCompleteDelay`` (the soak), and only then takes the next node.

The canary is a Plan of its own over the nodes labelled ``nestbuild.io/canary=true``; each
canary node it finishes gets ``nestbuild.io/canary-passed=<version>``. The Plan for the rest
excludes the canary nodes and its ``prepare`` container (run before cordon, so waiting nodes
keep their workloads) is ``kubectl wait`` until every canary node carries that label for this
version: a canary that fails its health gate never gets the label, and the rest never starts.

Nothing passes through a shell: the step's arguments are an argv list, so a health command
reaches ``nestbuild node upgrade`` as one argument whatever it contains (``--health-cmd=CMD``,
so one that starts with ``-`` is still a value). The one rewriting Kubernetes does to
``command`` and ``args`` is ``$(VAR)`` expansion, so every ``$`` is written ``$$``.
"""

from __future__ import annotations

import copy
import math
import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nestbuild.errors import NestbuildError, UsageError

GROUP = "upgrade.cattle.io"
VERSION = "v1"
PLURAL = "plans"
API_VERSION = f"{GROUP}/{VERSION}"

#: The default node selector: nodes that opted in to nestbuild's rollouts.
MANAGED_LABEL = "nestbuild.io/managed"
#: Nodes that take the image first.
CANARY_LABEL = "nestbuild.io/canary"
#: Set by SUC on a canary node once its Job completed and its soak passed; the value is the
#: Plan's version, so a label left from an earlier rollout does not open the gate.
CANARY_PASSED_LABEL = "nestbuild.io/canary-passed"

#: Any image with ``chroot`` runs the step (it runs the host's nestbuild); a tag or a digest
#: is required, because SUC puts the Plan's version as the tag of an image named without one.
DEFAULT_UPGRADE_IMAGE = "docker.io/library/busybox:1.36"
#: An image whose entrypoint is kubectl: SUC's own default for its cordon and drain steps.
DEFAULT_KUBECTL_IMAGE = "docker.io/rancher/kubectl:v1.30.3"

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


@dataclass(frozen=True)
class KubePlanSpec:
    """What a rollout asks of the cluster; :func:`plans` turns it into Plans."""

    #: ``[docker://]REGISTRY/REPO@sha256:...``: by digest, so every node takes the same image.
    image: str
    #: Plan names: ``NAME-canary`` and ``NAME-fleet``.
    name: str = "nestbuild"
    namespace: str = "system-upgrade"
    #: SUC's own service account in its standard install; the canary gate needs it to
    #: watch nodes.
    service_account: str = "system-upgrade"
    #: Labels every node of the rollout carries.
    node_selector: Mapping[str, str] = field(
        default_factory=lambda: {MANAGED_LABEL: "true"})
    #: Canary nodes moved at once (they are the nodes labelled ``nestbuild.io/canary=true``);
    #: 0: no canary Plan.
    canary: int = 1
    #: Nodes of the rest moved at once: a count, or ``N%`` of ``node_count``; at least 1.
    max_unavailable: str | int = 1
    node_count: int | None = None
    drain: bool = False
    #: Seconds ``kubectl drain`` waits (None: kubectl's default, no limit).
    drain_timeout: float | None = None
    #: Drain pods that no controller manages (kubectl drain --force).
    drain_force: bool = False
    #: Seconds a node must stay healthy after its Job completed before the next one starts.
    soak: float = 0
    via: str = "bootc"
    health_cmds: tuple[str, ...] = ()
    health_urls: tuple[str, ...] = ()
    #: Seconds (None: the step's default).
    health_timeout: float | None = None
    #: Seconds one node's Job may take: pull, stage, reboot, health gate.
    job_deadline: float = 3600
    upgrade_image: str = DEFAULT_UPGRADE_IMAGE
    kubectl_image: str = DEFAULT_KUBECTL_IMAGE


def concurrency(max_unavailable: str | int, node_count: int | None) -> int:
    """``--max-unavailable`` as a node count, as the Ansible engine sizes its waves
    (:func:`nestbuild.fleet.plan.batch_size`); a percentage needs the number of nodes."""
    from nestbuild.fleet.plan import batch_size

    text = str(max_unavailable).strip()
    if text.endswith("%") and (node_count is None or node_count < 1):
        batch_size(text, 1)  # a malformed percentage is named first
        raise UsageError(f"--max-unavailable {text}: a percentage needs the number of nodes")
    return batch_size(text, node_count or 0)


def plan_version(digest: str) -> str:
    """The Plan's ``version``: the digest as a label value (SUC labels Jobs with it, and a
    label value has at most 63 characters of ``[A-Za-z0-9_.-]``)."""
    algo, _, hexpart = digest.partition(":")
    return f"{algo}-{hexpart}"[:63]


def plans(spec: KubePlanSpec) -> list[dict[str, Any]]:
    """The Plans to apply, canary first."""
    from nestbuild._registry import reference

    ref = reference.parse(spec.image)
    if ref.digest is None:
        raise UsageError(f"{spec.image}: give the image by digest (REPO@sha256:...), so every "
                         "node takes the same image")
    target = f"{ref.name}@{ref.digest}"
    version = plan_version(ref.digest)
    _check(spec)
    upgrade_image = _tagged(spec.upgrade_image, "upgrade image")
    selector = dict(spec.node_selector)
    batch = concurrency(spec.max_unavailable, spec.node_count)
    deadline = math.ceil(spec.job_deadline)
    soak = math.ceil(spec.soak)

    def plan(name: str, node_selector: dict[str, Any], size: int, job_deadline: int
             ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "concurrency": size,
            "version": version,
            "nodeSelector": node_selector,
            "serviceAccountName": spec.service_account,
            # the nodes opted in by their labels: no taint keeps their upgrade from running
            "tolerations": [{"operator": "Exists"}],
            "exclusive": True,
            "cordon": True,
            "jobActiveDeadlineSecs": job_deadline,
            "upgrade": {"image": upgrade_image, "command": ["chroot", "/host"],
                        "args": [_escape(a) for a in step_argv(spec, target)]},
        }
        if spec.drain:
            drain: dict[str, Any] = {"ignoreDaemonSets": True, "deleteEmptydirData": True,
                                     "force": spec.drain_force}
            if spec.drain_timeout is not None:
                drain["timeout"] = _go_duration(spec.drain_timeout)
            body["drain"] = drain
        if soak:
            body["postCompleteDelay"] = _go_duration(soak)
        return {
            "apiVersion": API_VERSION,
            "kind": "Plan",
            "metadata": {
                "name": name,
                "namespace": spec.namespace,
                "labels": {"app.kubernetes.io/managed-by": "nestbuild"},
                "annotations": {"nestbuild.io/image": target},
            },
            "spec": body,
        }

    out: list[dict[str, Any]] = []
    rest = _selector(selector)
    if spec.canary == 0:
        out.append(plan(f"{spec.name}-fleet", rest, batch, deadline))
        return out
    canary = plan(f"{spec.name}-canary",
                  _selector({**selector, CANARY_LABEL: "true"}), spec.canary, deadline)
    canary["spec"]["postCompleteLabels"] = {CANARY_PASSED_LABEL: version}
    out.append(canary)
    # The rest waits for the canary: at worst its Jobs run their whole deadline, then soak.
    wait = deadline + soak
    rest.setdefault("matchExpressions", []).append(
        {"key": CANARY_LABEL, "operator": "NotIn", "values": ["true"]})
    fleet = plan(f"{spec.name}-fleet", rest, batch, wait + deadline)
    canary_nodes = ",".join(f"{k}={v}" for k, v in {**selector, CANARY_LABEL: "true"}.items())
    label_path = CANARY_PASSED_LABEL.replace(".", "\\.")
    fleet["spec"]["prepare"] = {
        "image": _tagged(spec.kubectl_image, "kubectl image"),
        "args": [_escape(a) for a in (
            "wait", "node", "--selector", canary_nodes,
            f"--for=jsonpath={{.metadata.labels.{label_path}}}={version}",
            f"--timeout={wait}s")],
    }
    out.append(fleet)
    return out


def step_argv(spec: KubePlanSpec, target: str) -> list[str]:
    """The per-node step as the host runs it (after ``chroot /host``), before Kubernetes'
    ``$`` escaping. User text goes in ``--option=VALUE`` form, so a health command that starts
    with ``-`` is that option's value, not an option of its own."""
    argv = ["nestbuild", "node", "upgrade", f"--via={spec.via}", "--rollback-on-failure",
            "--reboot=self"]
    argv += [f"--health-cmd={cmd}" for cmd in spec.health_cmds]
    argv += [f"--health-url={url}" for url in spec.health_urls]
    if spec.health_timeout is not None:
        argv.append(f"--health-timeout={_go_duration(spec.health_timeout)}")
    return [*argv, "--", target]


def dump_plans(items: Sequence[Mapping[str, Any]]) -> str:
    """Plans as multi-document YAML, what ``kubectl apply -f`` reads."""
    import yaml

    return yaml.safe_dump_all([dict(p) for p in items], explicit_start=True, sort_keys=False,
                              default_flow_style=False, allow_unicode=True)


def write_plans(items: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Write the Plans to ``path`` whole or not at all, with a plain write's mode."""
    from nestbuild._util.atomic import write_atomic

    if not path.parent.is_dir():
        raise UsageError(f"{path}: no such directory {path.parent}")
    umask = os.umask(0o022)
    os.umask(umask)
    try:
        write_atomic(path, dump_plans(items).encode(), 0o666 & ~umask)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write it ({exc.strerror})") from None


def apply_plans(items: Sequence[Mapping[str, Any]], kubeconfig: Path,
                context: str | None = None) -> list[str]:
    """Create each Plan, or replace it if it exists; one line per Plan (``created NS/NAME``,
    ``updated NS/NAME``). Errors are one line and never quote the kubeconfig's secrets."""
    try:
        import urllib3
        from kubernetes import client, config
        from kubernetes.client.exceptions import ApiException
    except ImportError:
        raise NestbuildError("applying Plans needs the Kubernetes client: "
                             "pip install 'nestbuild[kubernetes]'") from None
    api_client = _load_kubeconfig(config, kubeconfig, context)
    server = _server(api_client.configuration.host)
    done: list[str] = []
    try:
        api = client.CustomObjectsApi(api_client)
        for plan in items:
            body = copy.deepcopy(dict(plan))
            namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
            where = f"{namespace}/{name}"
            try:
                try:
                    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body,
                                                        _request_timeout=60)
                    done.append(f"created {where}")
                    continue
                except ApiException as exc:
                    if exc.status != 409:
                        raise
                current: Any = api.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name, _request_timeout=60)
                body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                api.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                     body, _request_timeout=60)
                done.append(f"updated {where}")
            except ApiException as exc:
                raise NestbuildError(f"{server}: plan {where}: {_api_cause(exc)}") from None
            except urllib3.exceptions.HTTPError as exc:
                raise NestbuildError(f"{server}: cannot reach the Kubernetes API server "
                                     f"({_one_line(type(exc).__name__)})") from None
    finally:
        api_client.close()
    return done


# -- helpers --------------------------------------------------------------------------------


def _check(spec: KubePlanSpec) -> None:
    """Refuse what the API server or SUC would refuse later, or what would select no node."""
    if not _DNS_LABEL.fullmatch(spec.name) or len(spec.name) > 63 - len("-canary"):
        raise UsageError(f"plan name {spec.name!r}: expected lowercase letters, digits and '-' "
                         f"(at most {63 - len('-canary')} characters)")
    if not _DNS_LABEL.fullmatch(spec.namespace) or len(spec.namespace) > 63:
        raise UsageError(f"namespace {spec.namespace!r}: not a Kubernetes namespace name")
    if not _DNS_SUBDOMAIN.fullmatch(spec.service_account) or len(spec.service_account) > 253:
        raise UsageError(f"service account {spec.service_account!r}: not a Kubernetes name")
    for key, value in spec.node_selector.items():
        _check_label(key, value)
    if spec.canary < 0:
        raise UsageError(f"--canary {spec.canary}: expected 0 or more nodes")
    if spec.via not in ("bootc", "rpm-ostree"):
        raise UsageError(f"--via {spec.via}: a Kubernetes node upgrades with bootc or rpm-ostree")
    for what, seconds in (("soak", spec.soak), ("job deadline", spec.job_deadline),
                          ("drain timeout", spec.drain_timeout),
                          ("health timeout", spec.health_timeout)):
        if seconds is not None and not 0 <= seconds < 10**9:
            raise UsageError(f"{what} {seconds}: expected 0 or more seconds")
    if spec.job_deadline < 1:
        raise UsageError("job deadline: expected 1 second or more")
    if spec.health_timeout is not None and spec.health_timeout >= spec.job_deadline:
        raise UsageError(f"health timeout {spec.health_timeout:g}s: must be shorter than the job "
                         f"deadline ({spec.job_deadline:g}s), which also covers pull and reboot")


def _check_label(key: str, value: str) -> None:
    prefix, _, name = key.rpartition("/")
    if (not _LABEL_NAME.fullmatch(name) or len(name) > 63
            or (prefix and (not _DNS_SUBDOMAIN.fullmatch(prefix) or len(prefix) > 253))):
        raise UsageError(f"node label {key!r}: not a Kubernetes label key")
    if value and (not _LABEL_NAME.fullmatch(value) or len(value) > 63):
        raise UsageError(f"node label {key}={value!r}: not a Kubernetes label value")
    if key == CANARY_LABEL:
        raise UsageError(f"node label {key}: the canary label is nestbuild's; use --canary")


def _tagged(image: str, what: str) -> str:
    from nestbuild._registry import reference

    ref = reference.parse(image)
    if ref.name_only:
        raise UsageError(f"{what} {image}: give a tag or a digest (SUC would use the Plan's "
                         "version as the tag)")
    return ref.exact


def _selector(labels: Mapping[str, str]) -> dict[str, Any]:
    """A LabelSelector; an empty one (``{}``) selects every node, a missing one none."""
    return {"matchLabels": dict(labels)} if labels else {}


def _escape(arg: str) -> str:
    """``arg`` as Kubernetes must see it to pass it on unchanged: ``$$`` stands for ``$``, so
    no ``$(VAR)`` in a health command is expanded from the container's environment."""
    return arg.replace("$", "$$")


def _go_duration(seconds: float) -> str:
    """Seconds as a Go ``time.Duration`` string (what postCompleteDelay and kubectl take)."""
    return f"{math.ceil(seconds)}s"


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _server(host: str) -> str:
    """The API server as ``scheme://host:port``: no user info or path from the kubeconfig."""
    parts = urllib.parse.urlsplit(host)
    netloc = parts.hostname or "?"
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port:
        netloc += f":{parts.port}"
    return f"{parts.scheme}://{netloc}"


def _api_cause(exc: Any) -> str:
    """What the API server said: its Status message, else the HTTP reason."""
    import json

    message = None
    try:
        status = json.loads(exc.body or "")
        if isinstance(status, dict) and isinstance(status.get("message"), str):
            message = status["message"]
    except ValueError:
        pass
    cause = f"{exc.status} {exc.reason}" + (f": {message}" if message else "")
    if exc.status == 404:
        cause += " (is system-upgrade-controller installed, with its Plan CRD?)"
    return _one_line(cause)


def _load_kubeconfig(config: Any, kubeconfig: Path, context: str | None) -> Any:
    """An API client for ``kubeconfig``; a file that is not one is a one-line UsageError that
    quotes no line of it (a YAML error would show the line, which may hold a token)."""
    import yaml

    if not kubeconfig.is_file():
        raise UsageError(f"{kubeconfig}: no such kubeconfig file")
    try:
        return config.new_client_from_config(config_file=str(kubeconfig), context=context,
                                             persist_config=False)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"{kubeconfig}: not valid YAML{where}") from None
    except config.ConfigException as exc:
        raise UsageError(f"{kubeconfig}: not a usable kubeconfig ({_one_line(str(exc))})"
                         ) from None
    except OSError as exc:
        raise UsageError(f"{kubeconfig}: cannot read it ({exc.strerror})") from None
    except Exception as exc:  # a malformed document: wrong types where the client looks
        raise UsageError(f"{kubeconfig}: not a usable kubeconfig "
                         f"({type(exc).__name__})") from None
