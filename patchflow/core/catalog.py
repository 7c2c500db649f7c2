"""Patch catalogs: the candidate updates a baseline is evaluated against.

A catalog is a JSON (or YAML) list of patches — one entry per available package version — as a scan of the
fleet's repositories reports them. See the README section "Catalog format" for every field.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator

from patchflow.core import versions
from patchflow.core.documents import Document, format_path, load_document, unknown_key, validation_problems
from patchflow.core.timeutil import parse_instant
from patchflow.errors import CatalogError, InvalidVersionError, Problem


class Patch(BaseModel):
    """One available package version.

    Filter values (product, classification, severity, priority, section) are matched case-insensitively
    by baselines, so ``required`` in a Debian ``Packages`` file matches the AWS value ``Required``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    name: str = Field(min_length=1)
    arch: str = Field(min_length=1)
    version: str = Field(min_length=1)
    """Full version as the package manager prints it: deb ``[epoch:]upstream[-revision]``, rpm
    ``[epoch:]version-release``."""
    family: Literal["deb", "rpm"]
    product: str | None = None
    """The OS product the patch is built for, as SSM names it (``AmazonLinux2023``, ``Ubuntu22.04``)."""
    classification: str | None = None
    severity: str | None = None
    priority: str | None = None
    section: str | None = None
    advisory_id: str | None = None
    cve_ids: list[str] = Field(default_factory=list)
    bugzilla_ids: list[str] = Field(default_factory=list)
    release_date: datetime | None = None
    """When the patch was released (for Amazon Linux: the update notice's *updated* date); ``None`` when
    the repository gives none: rules with an approval delay or date then approve it only with
    ``EnableNonSecurity`` (see :mod:`patchflow.core.evaluation`)."""
    repository: str | None = None
    security: StrictBool = False
    """True when the patch comes from a security source: a Debian/Ubuntu ``-security`` pocket, or on
    yum/dnf systems any update notice in ``updateinfo.xml``."""
    depends: list[str] = Field(default_factory=list)
    """Names of the packages this version depends on."""

    @field_validator("release_date", mode="before")
    @classmethod
    def _parse_release_date(cls, value: Any) -> Any:
        if value is None or isinstance(value, datetime):
            return value
        if not isinstance(value, str):
            raise ValueError(f"expected an RFC 3339 timestamp string or null, got {value!r}")
        return parse_instant(value)

    @field_validator("bugzilla_ids", mode="before")
    @classmethod
    def _bugzilla_as_strings(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        return value

    @property
    def key(self) -> tuple[str, str]:
        """The identity a patch set pins a version for: package name and architecture."""
        return (self.name, self.arch)

    @property
    def sort_key(self) -> tuple[Any, ...]:
        return versions.sort_key(self.family, self.version)


def parse_catalog(doc: Document) -> list[Patch]:
    """Validate a parsed catalog document; every problem in the file is reported at once."""
    data = doc.data
    prefix: tuple[str | int, ...] = ()
    problems: list[Problem] = []
    if isinstance(data, dict) and "patches" in data:
        problems += [
            doc.problem((str(k),), unknown_key(str(k), ("patches",))) for k in data if k != "patches"
        ]
        data = data["patches"]
        prefix = ("patches",)
    if not isinstance(data, list):
        raise CatalogError(
            "a catalog must be a JSON list of patches (or an object with a 'patches' list)", source=doc.source
        )
    patches: list[Patch] = []
    first: dict[tuple[str | None, ...], int] = {}
    for index, item in enumerate(data):
        where = (*prefix, index)
        if not isinstance(item, dict):
            problems.append(doc.problem(where, f"expected a patch object, got {type(item).__name__}"))
            continue
        try:
            patch = Patch.model_validate(item)
        except ValidationError as exc:
            problems.extend(validation_problems(exc, doc, prefix=where, known_fields=Patch.model_fields))
            continue
        try:
            versions.validate(patch.family, patch.version)
        except InvalidVersionError as exc:
            problems.append(doc.problem((*where, "version"), exc.summary))
            continue
        # The same patch twice is a mistake, and would change the content-addressed patch set id.
        identity = (patch.family, patch.product, patch.name, patch.arch, patch.version)
        if identity in first:
            earlier = (*prefix, first[identity])
            problems.append(
                doc.problem(
                    where,
                    f"the same patch as entry {format_path(earlier)} (line {doc.line_of(earlier)}): "
                    f"{patch.name} {patch.arch} {patch.version}"
                    + (f" for {patch.product}" if patch.product else "")
                    + "; list each package version once per product",
                )
            )
            continue
        first[identity] = index
        patches.append(patch)
        if len(problems) >= 50:
            break
    if problems:
        raise CatalogError("invalid patch catalog", source=doc.source, problems=problems)
    return patches


def load_catalog(path: str | Path) -> list[Patch]:
    """Load and validate a catalog file (see :func:`parse_catalog`)."""
    return parse_catalog(load_document(path, kind="catalog", error=CatalogError))
