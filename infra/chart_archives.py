"""The pinned Helm charts the platform installs, vendored as reproducible archives under ``charts/``.

``charts/<chart>-<version>.tgz`` is what a Helm release installs by default (no chart repository at
``pulumi up``, works air-gapped), and what ``fraudctl render`` and ``fraudctl verify`` render. Each
archive is built by :func:`package_chart` from the chart's upstream source folder (dependencies
unpacked under ``charts/``), exactly as ``helm package`` selects files: each chart's ``.helmignore``
plus Helm's built-in ``templates/.?*`` rule (``helm.sh/helm/v3`` ``pkg/ignore/rules.go``), files only,
one top-level folder named after the chart. Unlike ``helm package`` the archive is deterministic
(sorted entries, fixed mtime, owner 0, mode 0644, gzip without name or timestamp) and keeps every file
byte for byte (Helm re-marshals Chart.yaml); rebuilding gives the same sha256, recorded in
``charts/SOURCES.md``. See charts/README.md for bumping a chart.

Nothing here imports Pulumi or the Helm SDK: config validation asks which versions are vendored.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fraudctl.files import write_bytes

CHARTS_DIR = Path(__file__).resolve().parent.parent / "charts"
# 2000-01-01T00:00:00Z: any constant works; Helm ignores entry times.
ARCHIVE_MTIME = 946_684_800
_HELMIGNORE = ".helmignore"
# Helm always ignores dotfiles under templates/ (pkg/ignore/rules.go AddDefaults).
_DEFAULT_RULES = ("templates/.?*",)
_ARCHIVE_NAME = re.compile(r"^(?P<chart>[a-z0-9][a-z0-9-]*?)-(?P<version>\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.+-]+)?)\.tgz$")


class ChartSourceError(ValueError):
    """A chart folder that cannot be packaged (no Chart.yaml, bad .helmignore, irregular file)."""


# ---------------------------------------------------------------------------------------------------
# Where the archives are


def archive_name(chart: str, version: str) -> str:
    return f"{chart}-{version}.tgz"


def archive_path(chart: str, version: str, charts_dir: Path = CHARTS_DIR) -> Path:
    return charts_dir / archive_name(chart, version)


def parse_archive_name(path: str) -> tuple[str, str] | None:
    """(chart, version) of a path like ``./charts/flagger-1.40.0.tgz``; None for a chart name."""
    match = _ARCHIVE_NAME.match(path.rsplit("/", 1)[-1])
    return (match["chart"], match["version"]) if match and path.endswith(".tgz") else None


def vendored_versions(chart: str, charts_dir: Path = CHARTS_DIR) -> list[str]:
    """Versions of ``chart`` with an archive in ``charts_dir``, sorted."""
    versions = []
    for path in charts_dir.glob(f"{chart}-*.tgz"):
        match = _ARCHIVE_NAME.match(path.name)
        if match and match["chart"] == chart:
            versions.append(match["version"])
    return sorted(versions)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------
# .helmignore, as Helm reads it


def _go_glob(pattern: str) -> re.Pattern[str]:
    """Go's ``path/filepath.Match`` as a regex: ``*`` and ``?`` stop at ``/``, classes negate with ``^``."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        elif char == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                raise ChartSourceError(f"bad pattern {pattern!r}: unterminated [")
            body = pattern[i + 1 : end]
            negate = body.startswith("^")
            body = body[1:] if negate else body
            out.append(f"[{'^' if negate else ''}{body.replace(chr(92), chr(92) * 2)}]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out) + r"\Z")


@dataclass(frozen=True)
class _Rule:
    raw: str
    regex: re.Pattern[str]
    negate: bool
    must_dir: bool
    basename_only: bool

    def matches(self, path: str) -> bool:
        return bool(self.regex.match(path.rsplit("/", 1)[-1] if self.basename_only else path))


def _parse_rule(line: str) -> _Rule | None:
    rule = line.strip()
    if not rule or rule.startswith("#"):
        return None
    if "**" in rule:
        raise ChartSourceError(f".helmignore rule {rule!r}: ** is not supported by Helm")
    raw, negate = rule, rule.startswith("!")
    rule = rule[1:] if negate else rule
    must_dir = rule.endswith("/")
    rule = rule.rstrip("/") if must_dir else rule
    rooted = rule.startswith("/")
    rule = rule.lstrip("/")
    return _Rule(raw, _go_glob(rule), negate, must_dir, basename_only=not rooted and "/" not in rule)


class HelmIgnore:
    """The rules of one chart's ``.helmignore`` (``helm.sh/helm/v3`` ``pkg/ignore/rules.go`` semantics)."""

    def __init__(self, text: str = "") -> None:
        rules = [_parse_rule(line) for line in [*text.splitlines(), *_DEFAULT_RULES]]
        self.rules = [r for r in rules if r is not None]

    def ignored(self, path: str, is_dir: bool) -> bool:
        for rule in self.rules:
            if rule.negate:
                # Helm: a negated rule ignores everything it does not match.
                if (rule.must_dir and not is_dir) or not rule.matches(path):
                    return True
                continue
            if rule.must_dir and not is_dir:
                continue
            if rule.matches(path):
                return True
        return False


# ---------------------------------------------------------------------------------------------------
# Packaging


def chart_metadata(chart_dir: Path) -> dict[str, str]:
    """``name``, ``version`` and ``appVersion`` from a chart folder's Chart.yaml."""
    import yaml

    chart_yaml = chart_dir / "Chart.yaml"
    if not chart_yaml.is_file():
        raise ChartSourceError(f"{chart_dir}: no Chart.yaml (not a chart folder)")
    meta = yaml.safe_load(chart_yaml.read_text()) or {}
    if not meta.get("name") or not meta.get("version"):
        raise ChartSourceError(f"{chart_yaml}: needs name and version")
    return {k: str(meta[k]) for k in ("name", "version", "appVersion") if k in meta}


def chart_files(chart_dir: Path) -> Iterator[tuple[str, Path]]:
    """(path inside the chart, file) of every file ``helm package`` would take, subcharts with their
    own ``.helmignore`` (as in each subchart's published package)."""
    ignore_file = chart_dir / _HELMIGNORE
    rules = HelmIgnore(ignore_file.read_text() if ignore_file.is_file() else "")
    subcharts = chart_dir / "charts"

    def walk(folder: Path) -> Iterator[tuple[str, Path]]:
        for entry in sorted(folder.iterdir(), key=lambda p: p.name):
            relative = entry.relative_to(chart_dir).as_posix()
            if entry.is_dir():
                if entry.parent == subcharts and (entry / "Chart.yaml").is_file():
                    yield from (
                        (f"charts/{entry.name}/{inner}", path) for inner, path in chart_files(entry)
                    )
                elif not rules.ignored(relative, is_dir=True):
                    yield from walk(entry)
            elif not rules.ignored(relative, is_dir=False):
                if not entry.is_file():
                    raise ChartSourceError(f"{entry}: not a regular file")
                yield relative, entry

    yield from walk(chart_dir)


def _stamped(data: bytes, version: str) -> bytes:
    """Chart.yaml with top-level ``version`` and ``appVersion`` set (istio/release-builder's stamp)."""
    text = data.decode()
    for key in ("version", "appVersion"):
        text, count = re.subn(rf"(?m)^{key}:.*$", f"{key}: {version}", text, count=1)
        if count != 1:
            raise ChartSourceError(f"Chart.yaml has no top-level {key}: to stamp")
    return text.encode()


def archive_bytes(chart_dir: Path, *, stamp_version: str | None = None) -> tuple[bytes, dict[str, str]]:
    """The deterministic ``.tgz`` of ``chart_dir`` and the packaged chart's metadata."""
    meta = chart_metadata(chart_dir)
    if stamp_version:
        meta = {**meta, "version": stamp_version, "appVersion": stamp_version}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for relative, path in sorted(chart_files(chart_dir)):
            data = path.read_bytes()
            if stamp_version and relative == "Chart.yaml":
                data = _stamped(data, stamp_version)
            info = tarfile.TarInfo(f"{meta['name']}/{relative}")
            info.size, info.mtime, info.mode = len(data), ARCHIVE_MTIME, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    compressed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0, compresslevel=9) as gz:
        gz.write(buffer.getvalue())
    return compressed.getvalue(), meta


def package_chart(chart_dir: Path, out_dir: Path = CHARTS_DIR, *, stamp_version: str | None = None) -> Path:
    """Write ``<out_dir>/<name>-<version>.tgz`` atomically; returns its path."""
    data, meta = archive_bytes(Path(chart_dir), stamp_version=stamp_version)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / archive_name(meta["name"], meta["version"])
    return write_bytes(target, data)


def unpack(archive: Path, destination: Path) -> Path:
    """Extract an archive made by :func:`package_chart`; returns the chart folder."""
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(destination, filter="data")
        top = {name.split("/", 1)[0] for name in tar.getnames()}
    if len(top) != 1:
        raise ChartSourceError(f"{archive}: expected one top-level folder, found {sorted(top)}")
    return destination / top.pop()
