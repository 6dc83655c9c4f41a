"""An image's software bill of materials as an SPDX 2.3 JSON document.

Vulnerability scanners (Trivy, Grype, Dependency-Track) and registries read SBOMs in a standard
format, attached to the image as ``cosign attest --type spdxjson`` attaches them (predicate type
``https://spdx.dev/Document``), not nestbuild's own package list. SPDX 2.3 rather than
CycloneDX 1.5: it is the format cosign and containers tooling name first (``spdxjson``), an
ISO standard (ISO/IEC 5962) that licence and compliance tools read as well, and it carries all
an installed-package list needs: each package with its package URL (``pkg:rpm/...``,
``pkg:deb/...``) as an external reference, the image as the described package containing them.

The packages come from the image's own database (rpm's sqlite, Berkeley DB or ndb, or dpkg's
status file), read natively: nothing runs inside the image. The document is deterministic for
an image (its creation time is the image's), so attesting it again adds nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from nestbuild import __version__
from nestbuild.validation.installed import (
    Database,
    OsRelease,
    read_database,
    read_os_release,
)

if TYPE_CHECKING:
    from nestbuild._image.source import ImageSource
    from nestbuild._pkgdb.model import Package
    from nestbuild.validation.validate import Analysis, Progress

#: cosign's ``--type spdxjson``.
PREDICATE_TYPE = "https://spdx.dev/Document"
SPDX_VERSION = "SPDX-2.3"
#: SPDX documents are CC0-1.0 by the specification's rule.
DATA_LICENSE = "CC0-1.0"
NAMESPACE_BASE = "https://nestbuild.dev/spdx/"
NOASSERTION = "NOASSERTION"
IMAGE_ID = "SPDXRef-image"
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")


@dataclass(frozen=True)
class Sbom:
    """The document, and what it was made from."""

    document: dict[str, Any]
    #: The package database read, or None when the image has none (then only the image).
    database: Database | None

    @property
    def packages(self) -> int:
        return len(self.database.packages) if self.database else 0

    def to_json(self) -> str:
        return json.dumps(self.document, indent=2, sort_keys=False) + "\n"


def sbom(image_ref: str, *, base_ref: str | None = None,
         progress: Progress | None = None) -> Sbom:
    """The SPDX 2.3 document of ``image_ref``'s installed packages (see the module).

    The image is read as validate reads it (its base's index is cached); only the layers that
    hold the package database and os-release are read again.
    """
    from nestbuild._image import open_image
    from nestbuild.validation import baseindex
    from nestbuild.validation.validate import analyze

    image = open_image(image_ref)
    if image.config.bootable:
        return from_analysis(analyze(image_ref, base_ref, progress))
    # not a node image (pushed with validation off): index all its layers
    tree = baseindex.load_or_build(image, len(image.config.diff_ids),
                                   progress or (lambda _msg: None))
    database = read_database(image, tree)
    return Sbom(document(image, database, read_os_release(image, tree)), database)


def from_analysis(a: Analysis) -> Sbom:
    """The SBOM of an image validation has read: a signed push attests both from one read,
    and the package database its lints opened is not read again."""
    database = a.packages.installed
    return Sbom(document(a.image, database, read_os_release(a.image, a.overlay)), database)


def document(image: ImageSource, database: Database | None,
             os_release: OsRelease) -> dict[str, Any]:
    """The SPDX document of ``image`` with the packages of ``database``."""
    name = _image_name(image)
    digest = image.digest
    hexdigest = digest.split(":", 1)[1]
    image_pkg: dict[str, Any] = {
        "SPDXID": IMAGE_ID,
        "name": name,
        "versionInfo": digest,
        "downloadLocation": NOASSERTION,
        "filesAnalyzed": False,
        "primaryPackagePurpose": "CONTAINER",
        "checksums": [{"algorithm": "SHA256", "checksumValue": hexdigest}],
        "externalRefs": [{
            "referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
            "referenceLocator": _oci_purl(image, name)}],
    }
    if os_release.id:
        image_pkg["description"] = f"{os_release.id} {os_release.version_id}".strip()
    packages = [image_pkg]
    relationships = [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                      "relatedSpdxElement": IMAGE_ID}]
    seen: set[str] = set()
    for installed in database.packages if database else ():
        p = installed.package
        spdx_id = _unique(f"SPDXRef-{p.kind}-{p.name}-{p.evr}-{p.arch}", seen)
        entry: dict[str, Any] = {
            "SPDXID": spdx_id,
            "name": p.name,
            "versionInfo": p.evr,
            "downloadLocation": NOASSERTION,
            "filesAnalyzed": False,
            "licenseConcluded": NOASSERTION,
            "licenseDeclared": NOASSERTION,
            "copyrightText": NOASSERTION,
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                "referenceLocator": purl(p, os_release)}],
        }
        if p.license:
            # rpm's License tag is SPDX in new Fedora packages and free text in older ones;
            # stated as the packager wrote it, not as a concluded expression
            entry["licenseComments"] = f"License tag: {p.license}"
        if p.source:
            entry["sourceInfo"] = f"built from {p.source}"
        if p.arch:
            entry["summary"] = f"{p.kind} package for {p.arch}"
        packages.append(entry)
        relationships.append({"spdxElementId": IMAGE_ID, "relationshipType": "CONTAINS",
                              "relatedSpdxElement": spdx_id})
    return {
        "spdxVersion": SPDX_VERSION,
        "dataLicense": DATA_LICENSE,
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": f"{NAMESPACE_BASE}{quote(name, safe='')}-{hexdigest}",
        "creationInfo": {
            "created": _created(image),
            "creators": [f"Tool: nestbuild-{__version__}"],
            "comment": (f"installed packages from {database.path} ({database.format})"
                        if database else "the image has no package database"),
        },
        "documentDescribes": [IMAGE_ID],
        "packages": packages,
        "relationships": relationships,
    }


def purl(p: Package, os_release: OsRelease) -> str:
    """The package's URL with the distribution as namespace and ``distro`` qualifier, as
    scanners match them (``pkg:rpm/fedora/bash@5.2-1.fc40?arch=x86_64&distro=fedora-40``)."""
    url = p.purl(os_release.id or None)
    if not os_release.distro:
        return url
    head, _, query = url.partition("?")
    qualifiers = [q for q in query.split("&") if q]
    qualifiers.append(f"distro={quote(os_release.distro, safe='')}")
    return f"{head}?{'&'.join(sorted(qualifiers))}"


def _repository(image: ImageSource) -> str | None:
    """The image's repository (``HOST/PATH``, no tag or digest), for a local or registry
    image; None for an OCI layout or archive, which a path names."""
    if image.ref.transport not in ("containers-storage", "docker"):
        return None
    name = image.ref.name.split("@", 1)[0]
    head, slash, last = name.rpartition("/")
    return f"{head}{slash}{last.split(':', 1)[0]}"


def _image_name(image: ImageSource) -> str:
    repo = _repository(image)
    if repo is not None:
        return repo
    base = image.ref.name.rstrip("/").rsplit("/", 1)[-1] or "image"
    return f"{base}:{image.ref.tag}" if image.ref.tag else base


def _oci_purl(image: ImageSource, name: str) -> str:
    """``pkg:oci/NAME@sha256%3A...`` with ``repository_url`` when the image has a repository
    (purl-spec's oci type)."""
    repo = _repository(image)
    last = (repo or name).rsplit("/", 1)[-1].split(":", 1)[0].lower() or "image"
    out = f"pkg:oci/{quote(last, safe='')}@{quote(image.digest, safe='')}"
    return out + (f"?repository_url={quote(repo, safe='/')}" if repo else "")


def _unique(raw: str, seen: set[str]) -> str:
    """An SPDX id (letters, digits, ``.`` and ``-``) no other element of the document has."""
    base = _ID_UNSAFE.sub("-", raw).strip("-")
    out, n = base, 1
    while out in seen:
        n += 1
        out = f"{base}-{n}"
    seen.add(out)
    return out


def _created(image: ImageSource) -> str:
    """The image's creation time (UTC, whole seconds), so the same image gives the same
    document; the epoch when the config does not say one."""
    try:
        raw = json.loads(image.config.raw).get("created")
        when = dt.datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        when = when.astimezone(dt.UTC)
    except (ValueError, TypeError, AttributeError, OverflowError):
        when = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")
