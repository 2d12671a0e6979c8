"""The vendored chart archives (charts/*.tgz): provenance, licences, reproducibility, .helmignore."""

from __future__ import annotations

import io
import os
import re
import tarfile
from pathlib import Path

import pytest
import yaml

from infra.chart_archives import (
    CHARTS_DIR,
    ChartSourceError,
    HelmIgnore,
    archive_bytes,
    chart_files,
    package_chart,
    sha256_file,
    unpack,
    vendored_versions,
)
from infra.config import CHART_COMPONENTS, project_defaults

ARCHIVES = sorted(CHARTS_DIR.glob("*.tgz"))
SOURCES = (CHARTS_DIR / "SOURCES.md").read_text()


def recorded_hashes() -> dict[str, str]:
    return dict(re.findall(r"^\| `([^`]+\.tgz)` \| ([0-9a-f]{64}) \|", SOURCES, re.MULTILINE))


def test_every_archive_is_recorded_with_its_sha256() -> None:
    recorded = recorded_hashes()
    assert set(recorded) == {p.name for p in ARCHIVES}
    for path in ARCHIVES:
        assert sha256_file(path) == recorded[path.name], f"{path.name} differs from charts/SOURCES.md"


def test_every_default_chart_version_is_vendored() -> None:
    from infra.charts import chart_releases

    platform = project_defaults()["platform"]
    for component in CHART_COMPONENTS:
        for spec in chart_releases(component):
            assert platform[component]["version"] in vendored_versions(spec.chart), (component, spec.chart)


@pytest.mark.parametrize("archive", ARCHIVES, ids=lambda p: p.name)
def test_archive_layout_metadata_and_licences(archive: Path) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        chart_yaml = yaml.safe_load(tar.extractfile(next(m for m in members if m.name.count("/") == 1
                                                         and m.name.endswith("/Chart.yaml"))).read())
        charts = {n.rsplit("/Chart.yaml", 1)[0] for n in names if n.endswith("/Chart.yaml")}
        for chart_root in charts:
            licence = tar.extractfile(f"{chart_root}/LICENSE").read().decode()
            assert "Apache License" in licence and "Version 2.0" in licence, chart_root
    assert archive.name == f"{chart_yaml['name']}-{chart_yaml['version']}.tgz"
    assert names == sorted(names), "entries are sorted"
    assert all(m.isfile() and m.mtime == members[0].mtime and m.uid == 0 and m.mode == 0o644 for m in members)
    assert {n.split("/", 1)[0] for n in names} == {chart_yaml["name"]}
    # .helmignore'd development files stay out (kube-prometheus-stack: hack/, ci/, unittests/).
    assert not [n for n in names if re.match(r"[^/]+/(hack|ci|unittests|\.github)/", n)]
    assert archive.read_bytes()[4:8] == b"\0\0\0\0", "gzip header carries no timestamp"


@pytest.mark.parametrize("archive", ARCHIVES, ids=lambda p: p.name)
def test_repackaging_an_archive_reproduces_it_byte_for_byte(archive: Path, tmp_path: Path) -> None:
    chart_dir = unpack(archive, tmp_path / "src")
    # Different mtimes and permissions on disk must not change the archive.
    for root, _dirs, files in os.walk(chart_dir):
        for name in files:
            os.utime(Path(root) / name, (1_700_000_000, 1_700_000_000))
            os.chmod(Path(root) / name, 0o600)
    data, _meta = archive_bytes(chart_dir)
    assert data == archive.read_bytes()
    assert package_chart(chart_dir, tmp_path / "out") == tmp_path / "out" / archive.name


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_helmignore_rules_follow_helm(tmp_path: Path) -> None:
    chart = write(
        tmp_path / "demo",
        {
            "Chart.yaml": "apiVersion: v2\nname: demo\nversion: 1.2.3\n",
            ".helmignore": "# comment\n*.swp\nci/\n/*.tgz\ndocs/*\nsecret[0-9].txt\n",
            "values.yaml": "{}\n",
            "templates/a.yaml": "",
            "templates/.hidden.yaml": "",  # Helm's built-in rule: templates/.?*
            "templates/b.yaml.swp": "",
            "ci/values.yaml": "",
            "templates/ci/nested.yaml": "",  # a basename rule matches a folder at any depth
            "old.tgz": "",
            "files/keep.tgz": "",  # rooted rule: only at the top
            "docs/readme.md": "",
            "secret1.txt": "",
            "secretA.txt": "",
            # A subchart is packaged with its own .helmignore, not the parent's.
            "charts/sub/Chart.yaml": "apiVersion: v2\nname: sub\nversion: 0.1.0\n",
            "charts/sub/.helmignore": "*.md\n",
            "charts/sub/README.md": "",
            "charts/sub/x.swp": "",
        },
    )
    assert [name for name, _ in chart_files(chart)] == [
        ".helmignore",
        "Chart.yaml",
        "charts/sub/.helmignore",
        "charts/sub/Chart.yaml",
        "charts/sub/x.swp",
        "files/keep.tgz",
        "secretA.txt",
        "templates/a.yaml",
        "values.yaml",
    ]
    with pytest.raises(ChartSourceError, match=r"\*\* is not supported"):
        HelmIgnore("templates/**/x.yaml")
    negated = HelmIgnore("!templates/*")
    assert negated.ignored("values.yaml", is_dir=False) and not negated.ignored("templates/x", is_dir=False)


def test_stamp_version_rewrites_only_the_two_chart_yaml_lines(tmp_path: Path) -> None:
    chart = write(
        tmp_path / "istiod",
        {"Chart.yaml": "apiVersion: v2\nname: istiod\n# never shipped\nversion: 1.0.0\nappVersion: 1.0.0\n"},
    )
    data, meta = archive_bytes(chart, stamp_version="1.24.2")
    assert meta["version"] == "1.24.2"
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        text = tar.extractfile("istiod/Chart.yaml").read().decode()
    assert text == "apiVersion: v2\nname: istiod\n# never shipped\nversion: 1.24.2\nappVersion: 1.24.2\n"


def test_charts_package_cli(tmp_path: Path) -> None:
    from fraudctl.cli import main

    chart = write(tmp_path / "demo", {"Chart.yaml": "apiVersion: v2\nname: demo\nversion: 2.0.0\n"})
    assert main(["charts", "package", str(chart), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "demo-2.0.0.tgz").is_file()
    assert main(["charts", "package", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
