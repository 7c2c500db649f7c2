"""The lab's apt repository: generated test packages, their index files and patchflow's catalog of them.

Layout (served over HTTP on 127.0.0.1 by the lab)::

    repo/manifest.json                           every published version and its metadata
    repo/pool/main/<n>/<name>/<name>_<ver>_all.deb
    repo/dists/<suite>/Release                   suites: lab, lab-updates, lab-security
    repo/dists/<suite>/main/binary-amd64/Packages(.gz)

Hosts use it as ``deb [trusted=yes] http://127.0.0.1:PORT <suite> main`` for each suite. A second repository,
``repo/custom/`` (suite ``custom``, yum repository ``lab-custom``), is served beside it and configured on no host:
it is what a baseline's ``Sources`` name (``patchflow lab publish --custom``). Packages are
``Architecture: all`` and carry a file ``/usr/share/lab/<name>/version``; a version can depend on others, fail
in its postinst (exit 1, leaving the package half-configured like a real broken maintainer script), or request
a reboot (touching ``/var/run/reboot-required`` as Debian's kernel packages do).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from patchflow.core import versions
from patchflow.errors import InputError, InvalidVersionError

SUITES = ("lab", "lab-updates", "lab-security")
"""The release pocket, the updates pocket and the security pocket (like ``bookworm``, ``bookworm-updates`` and
``bookworm-security``)."""
CUSTOM_SUITE = "custom"
"""The one suite of the lab's second repository (``repo/custom``), which no host is configured for."""
CUSTOM_YUM_ID = "lab-custom"
"""The repository id of the second repository's yum side."""
PRODUCT = "Debian12"
"""The SSM product name of lab hosts (they are Debian bookworm)."""
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")


@dataclass(frozen=True)
class LabPackage:
    """One published version of a lab package."""

    name: str
    version: str
    suite: str = "lab"
    depends: tuple[str, ...] = ()
    """Debian relations, e.g. ``libfoo (>= 1.1-1)``."""
    priority: str = "optional"
    section: str = "misc"
    postinst_fails: bool = False
    reboot: bool = False
    """The postinst requests a reboot (``/var/run/reboot-required``), like a kernel update."""
    severity: str | None = None
    """Security versions: ``Critical``/``Important``/``Medium``/``Low`` (for the catalog)."""
    cve_ids: tuple[str, ...] = ()
    released: str = "2026-01-05T00:00:00Z"
    """When the version was published (RFC 3339), the catalog's release date."""
    initial: bool = False
    """Installed on every host when the lab comes up (release-pocket versions of the default set)."""

    @property
    def filename(self) -> str:
        upstream = self.version.split(":", 1)[1] if ":" in self.version else self.version
        return f"pool/main/{self.name[0]}/{self.name}/{self.name}_{upstream}_all.deb"

    @property
    def security(self) -> bool:
        return self.suite == "lab-security"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabPackage:
        data = dict(data)
        data["depends"] = tuple(data.get("depends", ()))
        data["cve_ids"] = tuple(data.get("cve_ids", ()))
        return cls(**data)


def _p(name: str, version: str, suite: str = "lab", **kw: Any) -> LabPackage:
    if suite == "lab":
        kw.setdefault("initial", True)
    if suite == "lab-security":
        kw.setdefault("severity", "Important")
        kw.setdefault("released", "2026-02-10T00:00:00Z")
    if suite == "lab-updates":
        kw.setdefault("released", "2026-02-03T00:00:00Z")
    return LabPackage(name, version, suite, **kw)


def default_packages() -> list[LabPackage]:
    """The lab's standard content: about twenty packages, each with a release version installed on every host
    and most with a newer version in ``lab-updates`` or ``lab-security``.

    It covers dependency chains (``app`` → ``libfoo``, ``openssl-lab`` = ``libssl-lab``), an epoch
    (``lab-epoch`` 2.0-1 → 1:1.5-1), a ``~`` pre-release (``tool`` 3.1~rc1-1), a version whose postinst fails
    (``flaky`` 1.1-1) and a kernel-like package that requests a reboot (``linux-image-lab`` 6.1.0-2).
    """
    return [
        _p("libfoo", "1.0-1", section="libs"),
        _p("libfoo", "1.1-1", "lab-security", section="libs", cve_ids=("CVE-2026-1001",)),
        _p("app", "1.0-1", depends=("libfoo (>= 1.0-1)",)),
        _p("app", "1.1-1", "lab-security", depends=("libfoo (>= 1.1-1)",), cve_ids=("CVE-2026-1002",)),
        _p("libbar", "2.0-1", section="libs"),
        _p("libbar", "2.1-1", "lab-updates", section="libs"),
        _p("tool", "3.0-1", depends=("libbar (>= 2.0-1)",), section="utils"),
        _p("tool", "3.1~rc1-1", "lab-updates", depends=("libbar (>= 2.0-1)",), section="utils"),
        _p("lab-epoch", "2.0-1"),
        _p("lab-epoch", "1:1.5-1", "lab-updates"),
        _p("flaky", "1.0-1"),
        _p("flaky", "1.1-1", "lab-updates", postinst_fails=True),
        _p("linux-image-lab", "6.1.0-1", section="kernel", priority="important"),
        _p(
            "linux-image-lab",
            "6.1.0-2",
            "lab-security",
            section="kernel",
            priority="important",
            reboot=True,
            severity="Critical",
            cve_ids=("CVE-2026-1003",),
        ),
        _p("libssl-lab", "3.0.1-1", section="libs", priority="important"),
        _p("libssl-lab", "3.0.2-1", "lab-security", section="libs", priority="important"),
        _p("openssl-lab", "3.0.1-1", depends=("libssl-lab (= 3.0.1-1)",), priority="important"),
        _p(
            "openssl-lab",
            "3.0.2-1",
            "lab-security",
            depends=("libssl-lab (= 3.0.2-1)",),
            priority="important",
        ),
        _p("curl-lab", "7.88.1-1", depends=("libssl-lab (>= 3.0.1-1)",), section="web"),
        _p("curl-lab", "7.88.1-2", "lab-updates", depends=("libssl-lab (>= 3.0.1-1)",), section="web"),
        _p("zlib-lab", "1.2.13-1", section="libs", priority="required"),
        _p("editor-lab", "9.0-1", section="editors"),
        _p("editor-lab", "9.1-1", "lab-updates", section="editors"),
        _p("daemon-lab", "1.0-1", depends=("libfoo (>= 1.0-1)",), section="admin"),
        _p("daemon-lab", "1.0-2", "lab-security", depends=("libfoo (>= 1.0-1)",), section="admin"),
        _p("tzdata-lab", "2025a-1", section="localization"),
        _p("tzdata-lab", "2025b-1", "lab-updates", section="localization"),
        _p("python-lab", "3.11.2-1", section="python"),
        _p("python-lab", "3.11.2-2", "lab-security", section="python", severity="Medium"),
        _p("docs-lab", "1.0-1", section="doc"),
        _p("dbus-lab", "1.14.10-1", section="admin", priority="standard"),
        _p("sudo-lab", "1.9.13-1", section="admin", priority="standard"),
        _p("sudo-lab", "1.9.13-2", "lab-security", section="admin", priority="standard", severity="High"),
    ]


class LabRepo:
    """The repository directory: build packages into it, index it, describe it as a catalog.

    Args:
        root: the directory (served over HTTP by the lab).
        suites: its apt suites (the main repository's three pockets, or the second repository's one).
        yum_id: the repository id of its yum side (catalog ``repository`` of its RPMs).
    """

    def __init__(self, root: Path, *, suites: tuple[str, ...] = SUITES, yum_id: str = "lab") -> None:
        self.root = root
        self.suites = suites
        self.yum_id = yum_id

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def packages(self) -> list[LabPackage]:
        if not self.manifest_path.is_file():
            return []
        data = json.loads(self.manifest_path.read_text())
        return [LabPackage.from_json(p) for p in data["packages"]]

    def create(self, packages: list[LabPackage] | None = None) -> None:
        """Build the repository from scratch with ``packages`` (default: :func:`default_packages`)."""
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        pkgs = default_packages() if packages is None else packages
        with tempfile.TemporaryDirectory(prefix="lab-build-") as tmp:
            for pkg in pkgs:
                _build_deb(pkg, self.root / pkg.filename, Path(tmp))
        self._write_manifest(pkgs)
        self.index()

    def publish(
        self,
        name: str,
        version: str,
        *,
        security: bool = False,
        depends: list[str] | None = None,
        postinst_fails: bool = False,
        reboot: bool = False,
        priority: str = "optional",
        section: str = "misc",
        released: datetime | None = None,
        suite: str | None = None,
    ) -> LabPackage:
        """Add a version (to ``lab-security`` or ``lab-updates``, or the given suite of this repository) and
        re-index.

        Raises:
            InputError: a bad name or version, or that version is already published.
        """
        if not _NAME_RE.match(name):
            raise InputError(
                f"{name!r} is not a Debian package name: use lower-case letters, digits, '+', '-' and '.' "
                "(at least two characters, starting with a letter or digit)"
            )
        try:
            versions.validate("deb", version)
        except InvalidVersionError as exc:
            raise InputError(f"version {version!r}: {exc.summary}") from exc
        existing = self.packages()
        if any(p.name == name and versions.compare("deb", p.version, version) == 0 for p in existing):
            raise InputError(f"{name} {version} is already published in the lab repository")
        for dep in depends or []:
            if not re.match(r"^[a-z0-9][a-z0-9+.-]+( \((<<|<=|=|>=|>>) [^)\s]+\))?$", dep):
                raise InputError(
                    f"--depends {dep!r}: expected NAME or 'NAME (OP VERSION)' with OP one of << <= = >= >>"
                )
        suite = suite or ("lab-security" if security else "lab-updates")
        if suite not in self.suites:
            raise InputError(f"suite {suite!r} is not one of this repository's ({', '.join(self.suites)})")
        pkg = LabPackage(
            name=name,
            version=version,
            suite=suite,
            depends=tuple(depends or ()),
            priority=priority,
            section=section,
            postinst_fails=postinst_fails,
            reboot=reboot,
            severity="Important" if security else None,
            released=(released or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        if any(p.filename == pkg.filename for p in existing):
            raise InputError(f"{name} {version}: another version already uses the file {pkg.filename}")
        with tempfile.TemporaryDirectory(prefix="lab-build-") as tmp:
            _build_deb(pkg, self.root / pkg.filename, Path(tmp))
        self._write_manifest([*existing, pkg])
        self.index()
        if self.has_yum:
            _build_rpm(pkg, self.yum_dir / "Packages", self.root / "rpmbuild")
            self._index_yum()
        return pkg

    def index(self) -> None:
        """Write every suite's ``Packages``, ``Packages.gz`` and ``Release`` from the manifest."""
        pkgs = self.packages()
        now = format_datetime(datetime.now(UTC), usegmt=True)
        for suite in self.suites:
            entries = [_packages_entry(p, self.root / p.filename) for p in pkgs if p.suite == suite]
            text = "\n".join(entries)
            bdir = self.root / "dists" / suite / "main" / "binary-amd64"
            bdir.mkdir(parents=True, exist_ok=True)
            raw = text.encode()
            (bdir / "Packages").write_bytes(raw)
            (bdir / "Packages.gz").write_bytes(gzip.compress(raw, mtime=0))
            lines = [
                "Origin: patchflow-lab",
                "Label: patchflow-lab",
                f"Suite: {suite}",
                f"Codename: {suite}",
                f"Date: {now}",
                "Architectures: amd64 all",
                "Components: main",
                "SHA256:",
            ]
            for rel in ("main/binary-amd64/Packages", "main/binary-amd64/Packages.gz"):
                data = (self.root / "dists" / suite / rel).read_bytes()
                lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {rel}")
            (self.root / "dists" / suite / "Release").write_text("\n".join(lines) + "\n")

    # ------------------------------------------------------------------------------------------ yum
    @property
    def yum_dir(self) -> Path:
        return self.root / "yum"

    @property
    def has_yum(self) -> bool:
        return (self.yum_dir / "repodata").is_dir()

    def create_yum(self) -> None:
        """Build every version as a ``noarch`` RPM too (``rpmbuild``), in a yum repository (``createrepo_c``)
        with an ``updateinfo.xml`` that marks the ``lab-security`` versions as security updates."""
        if self.has_yum:
            return
        out = self.yum_dir / "Packages"
        out.mkdir(parents=True, exist_ok=True)
        work = self.root / "rpmbuild"
        base = [LabPackage("lab-filesystem", "1.0-1", initial=True)] if self.suites == SUITES else []
        pkgs = [*base, *self.packages()]
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda p: _build_rpm(p, out, work / p.name / p.version.replace(":", "_")), pkgs))
        self._index_yum()

    def initial_rpms(self) -> list[Path]:
        names = [rpm_filename(LabPackage("lab-filesystem", "1.0-1"))] + [
            rpm_filename(p) for p in self.initial()
        ]
        return [self.yum_dir / "Packages" / n for n in names]

    def _index_yum(self) -> None:
        _check(["createrepo_c", "-q", "--update", str(self.yum_dir)], "createrepo_c")
        (self.root / "updateinfo.xml").write_text(_updateinfo(self.packages()))
        _check(
            [
                "modifyrepo_c",
                "--mdtype=updateinfo",
                str(self.root / "updateinfo.xml"),
                str(self.yum_dir / "repodata"),
            ],
            "modifyrepo_c",
        )

    def catalog(self, family: str = "deb") -> list[dict[str, Any]]:
        """patchflow's catalog (README "Catalog format") of every version in the repository: its apt
        packages (``deb``, arch ``all``) or its RPMs (``rpm``, arch ``noarch``; the security versions are
        those with an update notice in ``updateinfo.xml``)."""
        out: list[dict[str, Any]] = []
        for p in self.packages():
            out.append(
                {
                    "name": p.name,
                    "arch": "all" if family == "deb" else "noarch",
                    "version": p.version,
                    "family": family,
                    "product": PRODUCT,
                    "classification": "Security" if p.security else "Bugfix",
                    "severity": p.severity if p.security else None,
                    "priority": p.priority.capitalize() if family == "deb" else None,
                    "section": p.section if family == "deb" else None,
                    "cve_ids": list(p.cve_ids),
                    "release_date": p.released,
                    "repository": p.suite if family == "deb" else self.yum_id,
                    "security": p.security,
                    "depends": [d.split(" ", 1)[0] for d in p.depends],
                }
            )
        return out

    def initial(self) -> list[LabPackage]:
        return [p for p in self.packages() if p.initial]

    def _write_manifest(self, pkgs: list[LabPackage]) -> None:
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"packages": [p.to_json() for p in pkgs]}, indent=1))
        tmp.replace(self.manifest_path)


def yum_repo(port: int) -> str:
    """The dnf repository file of a lab RPM host."""
    return f"[lab]\nname=patchflow lab\nbaseurl=http://127.0.0.1:{port}/yum/\ngpgcheck=0\nenabled=1\nmetadata_expire=0\n"


def rpm_evr(version: str) -> tuple[str, str, str]:
    """A lab (Debian-style) version as RPM epoch, version, release: ``1:1.5-1`` → (``1``, ``1.5``, ``1``)."""
    epoch, _, rest = version.rpartition(":")
    upstream, _, release = rest.rpartition("-")
    return epoch or "0", upstream or rest, release or "1"


def rpm_filename(pkg: LabPackage) -> str:
    _, ver, rel = rpm_evr(pkg.version)
    return f"{pkg.name}-{ver}-{rel}.noarch.rpm"


def _rpm_requires(dep: str) -> str:
    name, _, rest = dep.partition(" (")
    if not rest:
        return name
    op, _, version = rest.rstrip(")").partition(" ")
    op = {"<<": "<", ">>": ">"}.get(op, op)
    epoch, ver, rel = rpm_evr(version)
    return f"{name} {op} {epoch + ':' if epoch != '0' else ''}{ver}-{rel}"


def _spec(pkg: LabPackage) -> str:
    epoch, ver, rel = rpm_evr(pkg.version)
    lines = [
        f"Name: {pkg.name}",
        f"Version: {ver}",
        f"Release: {rel}",
        *([f"Epoch: {epoch}"] if epoch != "0" else []),
        f"Summary: patchflow lab package {pkg.name}",
        "License: MIT",
        "BuildArch: noarch",
        *([f"Requires: {_rpm_requires(d)}" for d in pkg.depends]),
        *(["Provides: /bin/sh"] if pkg.name == "lab-filesystem" else []),
        "%description",
        "Generated by patchflow's lab for tests and demos.",
        "%install",
        f"mkdir -p %{{buildroot}}/usr/share/lab/{pkg.name}",
        f"echo {pkg.version} > %{{buildroot}}/usr/share/lab/{pkg.name}/version",
    ]
    script = _postinst(pkg)
    if script is not None:
        lines += ["%post", *script.splitlines()[1:]]
    lines += ["%files", f"/usr/share/lab/{pkg.name}/version"]
    return "\n".join(lines) + "\n"


def _build_rpm(pkg: LabPackage, out: Path, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    spec = work / f"{pkg.name}.spec"
    spec.write_text(_spec(pkg).replace('"$1" = configure', '"$1" -ge 1'))
    _check(
        [
            "rpmbuild",
            "--quiet",
            "--define",
            f"_topdir {work}",
            "--define",
            "_build_id_links none",
            "-bb",
            str(spec),
        ],
        f"rpmbuild of {pkg.name} {pkg.version}",
    )
    built = work / "RPMS" / "noarch" / rpm_filename(pkg)
    out.mkdir(parents=True, exist_ok=True)
    shutil.move(str(built), out / built.name)
    shutil.rmtree(work, ignore_errors=True)


def _check(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed: {(proc.stderr or proc.stdout).strip()[-1500:]}")


def _updateinfo(pkgs: list[LabPackage]) -> str:
    updates = []
    for n, p in enumerate(q for q in pkgs if q.security):
        epoch, ver, rel = rpm_evr(p.version)
        day = p.released.replace("T", " ").rstrip("Z")
        refs = "".join(
            f'<reference href="https://www.cve.org/CVERecord?id={c}" id="{c}" type="cve" title="{c}"/>'
            for c in p.cve_ids
        )
        updates.append(
            f'<update from="lab@patchflow.invalid" status="stable" type="security" version="1">'
            f"<id>LAB-{n + 1:04d}</id><title>{p.name} {p.version}</title>"
            f'<issued date="{day}"/><updated date="{day}"/><severity>{p.severity or "Important"}</severity>'
            f"<description>{p.name} {p.version}</description><references>{refs}</references>"
            f'<pkglist><collection short="lab"><name>lab</name>'
            f'<package name="{p.name}" version="{ver}" release="{rel}" epoch="{epoch}" arch="noarch">'
            f"<filename>{rpm_filename(p)}</filename></package></collection></pkglist></update>"
        )
    return '<?xml version="1.0" encoding="UTF-8"?>\n<updates>' + "".join(updates) + "</updates>\n"


def custom_source(port: int, family: str = "deb") -> str:
    """The second repository as a baseline ``Sources`` ``Configuration``: one apt line, or a yum repo file."""
    if family == "deb":
        return f"deb [trusted=yes] http://127.0.0.1:{port}/custom {CUSTOM_SUITE} main"
    return (
        f"[{CUSTOM_YUM_ID}]\nname=patchflow lab custom repository\nbaseurl=http://127.0.0.1:{port}/custom/yum/\n"
        "gpgcheck=0\nenabled=1\nmetadata_expire=0\n"
    )


def sources_list(port: int) -> str:
    """The apt sources of a lab host (every suite of the lab repository)."""
    return "".join(f"deb [trusted=yes] http://127.0.0.1:{port} {suite} main\n" for suite in SUITES)


def _control(pkg: LabPackage) -> str:
    lines = [
        f"Package: {pkg.name}",
        f"Version: {pkg.version}",
        "Architecture: all",
        "Maintainer: patchflow lab <lab@patchflow.invalid>",
        f"Priority: {pkg.priority}",
        f"Section: {pkg.section}",
    ]
    if pkg.depends:
        lines.append(f"Depends: {', '.join(pkg.depends)}")
    lines.append(f"Description: patchflow lab package {pkg.name}")
    lines.append(" Generated by patchflow's lab for tests and demos.")
    return "\n".join(lines) + "\n"


def _postinst(pkg: LabPackage) -> str | None:
    if pkg.postinst_fails:
        return (
            "#!/bin/sh\n"
            f'echo "{pkg.name} {pkg.version}: postinst fails on purpose (patchflow lab)" >&2\n'
            "exit 1\n"
        )
    if pkg.reboot:
        return (
            "#!/bin/sh\nset -e\n"
            'if [ "$1" = configure ]; then\n'
            "  touch /var/run/reboot-required\n"
            f"  echo {pkg.name} >> /var/run/reboot-required.pkgs\n"
            "fi\n"
        )
    return None


def _build_deb(pkg: LabPackage, out: Path, tmp: Path) -> None:
    build = tmp / f"{pkg.name}-{pkg.version.replace(':', '_')}"
    (build / "DEBIAN").mkdir(parents=True)
    (build / "DEBIAN" / "control").write_text(_control(pkg))
    script = _postinst(pkg)
    if script is not None:
        (build / "DEBIAN" / "postinst").write_text(script)
        (build / "DEBIAN" / "postinst").chmod(0o755)
    payload = build / "usr" / "share" / "lab" / pkg.name
    payload.mkdir(parents=True)
    (payload / "version").write_text(pkg.version + "\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(build), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"dpkg-deb failed for {pkg.name} {pkg.version}: {proc.stderr.strip()}")
    shutil.rmtree(build)


def _packages_entry(pkg: LabPackage, deb: Path) -> str:
    data = deb.read_bytes()
    control = _control(pkg).rstrip("\n").split("\n")
    # Description (and its continuation line) must stay last in the stanza.
    head = [line for line in control if not line.startswith(("Description:", " "))]
    tail = [line for line in control if line.startswith(("Description:", " "))]
    head += [
        f"Filename: {pkg.filename}",
        f"Size: {len(data)}",
        f"MD5sum: {hashlib.md5(data).hexdigest()}",  # noqa: S324 - apt's index format, not security
        f"SHA256: {hashlib.sha256(data).hexdigest()}",
    ]
    return "\n".join(head + tail) + "\n"


__all__ = [
    "CUSTOM_SUITE",
    "CUSTOM_YUM_ID",
    "PRODUCT",
    "SUITES",
    "LabPackage",
    "LabRepo",
    "custom_source",
    "default_packages",
    "rpm_evr",
    "rpm_filename",
    "sources_list",
    "yum_repo",
]
