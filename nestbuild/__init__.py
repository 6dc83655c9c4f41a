"""nestbuild: build, validate, sign and ship custom images of image-based container-host OSes.

This module is the public API; the ``nestbuild`` command is a thin layer over it, and a CI
script can do everything the command does::

    import nestbuild

    built = nestbuild.build(nestbuild.BuildOptions(context=Path("."), tag="localhost/node:1"))
    report = nestbuild.validate(built.image)
    pushed = nestbuild.push(nestbuild.PushOptions(image=built.image, destination=...))

The stages, in the order an image goes through them, are packages of their own:
``building``, ``validation``, ``signing``, ``shipping`` and ``node``; what is not part of
the API lives in ``_``-prefixed packages (the registry client, the image readers, the
external tools' command lines, small utilities, the command line).

Names are loaded on first use (PEP 562 ``__getattr__``). This is the package's one pattern
for lazy imports: ``nestbuild sign`` must not pay for the image readers, the build engines or
rich before its key is loaded, and a stage imports another stage's heavy modules inside the
function that needs them, never at the top of a module that a lighter command imports.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: typing.TYPE_CHECKING without importing typing (~5 ms, before a signing key can start).
TYPE_CHECKING = False

#: Every public name and the module that defines it.
_API: dict[str, str] = {
    # errors and exit codes
    "NestbuildError": "nestbuild.errors",
    "UsageError": "nestbuild.errors",
    "EXIT_OK": "nestbuild.errors",
    "EXIT_FAILED": "nestbuild.errors",
    "EXIT_INPUT": "nestbuild.errors",
    # references
    "ImageRef": "nestbuild._image.reference",
    "parse_reference": "nestbuild._image.reference",
    # building
    "build": "nestbuild.building.build",
    "BuildOptions": "nestbuild.building.engine",
    "BuildResult": "nestbuild.building.build",
    "BuildFailed": "nestbuild.building.engine",
    "node_files": "nestbuild.building.build",
    "project_policy": "nestbuild.building.build",
    "init_project": "nestbuild.building.scaffold",
    # validation
    "validate": "nestbuild.validation.validate",
    "diff": "nestbuild.validation.validate",
    "Report": "nestbuild.validation.report",
    "Finding": "nestbuild.validation.findings",
    "Policy": "nestbuild.validation.policy",
    "load_policy": "nestbuild.validation.policy",
    "Rule": "nestbuild.validation.declare",
    "rule_catalogue": "nestbuild.validation.rules",
    "sbom": "nestbuild.validation.sbom",
    "Sbom": "nestbuild.validation.sbom",
    # base images
    "build_base": "nestbuild.building.baseimage",
    "BuiltBase": "nestbuild.building.baseimage",
    "list_recipes": "nestbuild.building.baseimage",
    "Recipe": "nestbuild.building.baseimage",
    "UPSTREAM_BASES": "nestbuild.building.baseimage",
    "UpstreamBase": "nestbuild.building.baseimage",
    # signing
    "sign": "nestbuild.signing.signatures",
    "attest": "nestbuild.signing.signatures",
    "attest_validation": "nestbuild.signing.signatures",
    "verify": "nestbuild.signing.signatures",
    "open_target": "nestbuild.signing.signatures",
    "predicate_type_uri": "nestbuild.signing.signatures",
    "generate_key_pair": "nestbuild.signing.signatures",
    "load_signing_key": "nestbuild.signing.signatures",
    "start_loading_key": "nestbuild.signing.signatures",
    "load_public_keys": "nestbuild.signing.signatures",
    "Target": "nestbuild.signing.signatures",
    "KeyPair": "nestbuild.signing.signatures",
    "Signed": "nestbuild.signing.signatures",
    "Attested": "nestbuild.signing.signatures",
    "VerifyReport": "nestbuild.signing.signatures",
    "key_id": "nestbuild.signing.signatures",
    "tree": "nestbuild.signing.tree",
    "ImageTree": "nestbuild.signing.tree",
    "download_attestations": "nestbuild.signing.tree",
    "Statement": "nestbuild.signing.tree",
    # shipping
    "push": "nestbuild.shipping.push",
    "PushOptions": "nestbuild.shipping.push",
    "PushResult": "nestbuild.shipping.push",
    "PushRefused": "nestbuild.shipping.push",
    "upload": "nestbuild.shipping.upload",
    "Uploaded": "nestbuild.shipping.upload",
    "pull": "nestbuild.shipping.pull",
    "PullResult": "nestbuild.shipping.pull",
    "inspect": "nestbuild.shipping.pull",
    "login": "nestbuild.shipping.credentials",
    "logout": "nestbuild.shipping.credentials",
    "StoredLogin": "nestbuild.shipping.credentials",
    "RegistryAccess": "nestbuild._registry.access",
    # node
    "write_trust": "nestbuild.node.trust",
    "TrustSettings": "nestbuild.node.trust",
    "rebase": "nestbuild.node.rebase",
    "RebaseOptions": "nestbuild.node.rebase",
    "RebaseRefused": "nestbuild.node.checks",
    "ToolRebase": "nestbuild.node.tool",
    "SysrootRebase": "nestbuild.node.sysroot",
    "write_trust_to_sysroot": "nestbuild.node.sysroot",
    "node_status": "nestbuild.node.backend",
    "rollback": "nestbuild.node.backend",
    "NodeStatus": "nestbuild.node.status",
    "SysrootStatus": "nestbuild.node.sysroot",
    "Backend": "nestbuild.node.backend",
    "backend_for": "nestbuild.node.backend",
    "boot": "nestbuild.node.boot",
    "BootResult": "nestbuild.node.boot",
    "BootError": "nestbuild.node.boot",
    "changelog": "nestbuild.node.changelog",
    "Changelog": "nestbuild.node.changelog",
    "rebase_changelog": "nestbuild.node.changelog",
    "upgrade": "nestbuild.node.upgrade",
    "UpgradeOptions": "nestbuild.node.upgrade",
    "UpgradeResult": "nestbuild.node.upgrade",
    "HealthSpec": "nestbuild.node.health",
    "HealthReport": "nestbuild.node.health",
    # rollout
    "rollout": "nestbuild.fleet.rollout",
    "rollout_status": "nestbuild.fleet.rollout",
    "RolloutOptions": "nestbuild.fleet.rollout",
    "RolloutReport": "nestbuild.fleet.rollout",
    "RolloutRefused": "nestbuild.fleet.rollout",
    "Batching": "nestbuild.fleet.plan",
    "load_inventory": "nestbuild.fleet.inventory",
    "Inventory": "nestbuild.fleet.inventory",
}

__all__ = ["__version__", *_API]

if TYPE_CHECKING:
    from nestbuild._image.reference import ImageRef as ImageRef
    from nestbuild._image.reference import parse_reference as parse_reference
    from nestbuild._registry.access import RegistryAccess as RegistryAccess
    from nestbuild.building.baseimage import UPSTREAM_BASES as UPSTREAM_BASES
    from nestbuild.building.baseimage import BuiltBase as BuiltBase
    from nestbuild.building.baseimage import Recipe as Recipe
    from nestbuild.building.baseimage import UpstreamBase as UpstreamBase
    from nestbuild.building.baseimage import build_base as build_base
    from nestbuild.building.baseimage import list_recipes as list_recipes
    from nestbuild.building.build import BuildResult as BuildResult
    from nestbuild.building.build import build as build
    from nestbuild.building.build import node_files as node_files
    from nestbuild.building.build import project_policy as project_policy
    from nestbuild.building.engine import BuildFailed as BuildFailed
    from nestbuild.building.engine import BuildOptions as BuildOptions
    from nestbuild.building.scaffold import init_project as init_project
    from nestbuild.errors import EXIT_FAILED, EXIT_INPUT, EXIT_OK, NestbuildError, UsageError
    from nestbuild.fleet.inventory import Inventory as Inventory
    from nestbuild.fleet.inventory import load_inventory as load_inventory
    from nestbuild.fleet.plan import Batching as Batching
    from nestbuild.fleet.rollout import RolloutOptions as RolloutOptions
    from nestbuild.fleet.rollout import RolloutRefused as RolloutRefused
    from nestbuild.fleet.rollout import RolloutReport as RolloutReport
    from nestbuild.fleet.rollout import rollout as rollout
    from nestbuild.fleet.rollout import rollout_status as rollout_status
    from nestbuild.node.backend import Backend as Backend
    from nestbuild.node.backend import backend_for as backend_for
    from nestbuild.node.backend import node_status as node_status
    from nestbuild.node.backend import rollback as rollback
    from nestbuild.node.boot import BootError as BootError
    from nestbuild.node.boot import BootResult as BootResult
    from nestbuild.node.boot import boot as boot
    from nestbuild.node.changelog import Changelog as Changelog
    from nestbuild.node.changelog import changelog as changelog
    from nestbuild.node.changelog import rebase_changelog as rebase_changelog
    from nestbuild.node.checks import RebaseRefused as RebaseRefused
    from nestbuild.node.health import HealthReport as HealthReport
    from nestbuild.node.health import HealthSpec as HealthSpec
    from nestbuild.node.rebase import RebaseOptions as RebaseOptions
    from nestbuild.node.rebase import rebase as rebase
    from nestbuild.node.status import NodeStatus as NodeStatus
    from nestbuild.node.sysroot import SysrootRebase as SysrootRebase
    from nestbuild.node.sysroot import SysrootStatus as SysrootStatus
    from nestbuild.node.sysroot import write_trust_to_sysroot as write_trust_to_sysroot
    from nestbuild.node.tool import ToolRebase as ToolRebase
    from nestbuild.node.trust import TrustSettings as TrustSettings
    from nestbuild.node.trust import write_trust as write_trust
    from nestbuild.node.upgrade import UpgradeOptions as UpgradeOptions
    from nestbuild.node.upgrade import UpgradeResult as UpgradeResult
    from nestbuild.node.upgrade import upgrade as upgrade
    from nestbuild.shipping.credentials import StoredLogin as StoredLogin
    from nestbuild.shipping.credentials import login as login
    from nestbuild.shipping.credentials import logout as logout
    from nestbuild.shipping.pull import PullResult as PullResult
    from nestbuild.shipping.pull import inspect as inspect
    from nestbuild.shipping.pull import pull as pull
    from nestbuild.shipping.push import PushOptions as PushOptions
    from nestbuild.shipping.push import PushRefused as PushRefused
    from nestbuild.shipping.push import PushResult as PushResult
    from nestbuild.shipping.push import push as push
    from nestbuild.shipping.upload import Uploaded as Uploaded
    from nestbuild.shipping.upload import upload as upload
    from nestbuild.signing.signatures import Attested as Attested
    from nestbuild.signing.signatures import KeyPair as KeyPair
    from nestbuild.signing.signatures import Signed as Signed
    from nestbuild.signing.signatures import Target as Target
    from nestbuild.signing.signatures import VerifyReport as VerifyReport
    from nestbuild.signing.signatures import attest as attest
    from nestbuild.signing.signatures import attest_validation as attest_validation
    from nestbuild.signing.signatures import generate_key_pair as generate_key_pair
    from nestbuild.signing.signatures import key_id as key_id
    from nestbuild.signing.signatures import load_public_keys as load_public_keys
    from nestbuild.signing.signatures import load_signing_key as load_signing_key
    from nestbuild.signing.signatures import open_target as open_target
    from nestbuild.signing.signatures import predicate_type_uri as predicate_type_uri
    from nestbuild.signing.signatures import sign as sign
    from nestbuild.signing.signatures import start_loading_key as start_loading_key
    from nestbuild.signing.signatures import verify as verify
    from nestbuild.signing.tree import ImageTree as ImageTree
    from nestbuild.signing.tree import Statement as Statement
    from nestbuild.signing.tree import download_attestations as download_attestations
    from nestbuild.signing.tree import tree as tree
    from nestbuild.validation.declare import Rule as Rule
    from nestbuild.validation.findings import Finding as Finding
    from nestbuild.validation.policy import Policy as Policy
    from nestbuild.validation.policy import load_policy as load_policy
    from nestbuild.validation.report import Report as Report
    from nestbuild.validation.rules import rule_catalogue as rule_catalogue
    from nestbuild.validation.sbom import Sbom as Sbom
    from nestbuild.validation.sbom import sbom as sbom
    from nestbuild.validation.validate import diff as diff
    from nestbuild.validation.validate import validate as validate


def __getattr__(name: str) -> object:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
