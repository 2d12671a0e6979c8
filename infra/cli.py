"""``fraudctl render``, ``check-config``, ``verify``, ``charts package`` and ``config-schema``.

Results (paths, check tables, the schema) go to stdout, progress to stderr (logging); bad input (an invalid
stack, an unknown check, an unusable chart folder) is a UsageError: one line, exit 2.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fraudctl.errors import UsageError
from infra.config import ConfigError, check_stack, parse_set_overrides, read_stack_file

if TYPE_CHECKING:
    from infra.render import RenderResult

log = logging.getLogger(__name__)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], bench: object) -> None:
    render = commands.add_parser("render", help="render a stack offline (no pulumi CLI, no cluster)")
    render.add_argument("--stack", required=True, help="stack name: reads Pulumi.<stack>.yaml")
    render.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (dotted path)"
    )
    render.add_argument("--out", required=True, type=Path, help="output folder: <out>/<region>/manifests.yaml ...")
    render.set_defaults(handler=run_render)

    check = commands.add_parser("check-config", help="validate stack files without rendering")
    check.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="Pulumi.<stack>.yaml files")
    check.set_defaults(handler=run_check_config)

    verify = commands.add_parser(
        "verify", help="render a stack with real Helm and check the platform as one system (exit 1 on a failure)"
    )
    verify.add_argument("--stack", required=True, help="stack name: reads Pulumi.<stack>.yaml")
    verify.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (dotted path)"
    )
    verify.add_argument("--check", action="append", default=None, metavar="NAME", help="run only these checks")
    verify.add_argument("--all-failures", action="store_true", help="list every failure, not the first three")
    verify.set_defaults(handler=run_verify)

    charts = commands.add_parser("charts", help="the vendored Helm chart archives under charts/")
    charts_commands = charts.add_subparsers(dest="charts_command", required=True, metavar="ACTION")
    package = charts_commands.add_parser(
        "package", help="package a chart folder into a reproducible charts/<chart>-<version>.tgz"
    )
    package.add_argument("chart_dir", type=Path, metavar="DIR", help="chart source folder (dependencies unpacked)")
    package.add_argument("--out", type=Path, default=None, help="output folder (default: the project's charts/)")
    package.add_argument(
        "--stamp-version", default=None, metavar="VERSION", help="set Chart.yaml version and appVersion (istio)"
    )
    package.set_defaults(handler=run_charts_package)

    schema = commands.add_parser(
        "config-schema", help="print Pulumi.yaml's config: block as the config models declare it (--write: update it)"
    )
    schema.add_argument("--write", action="store_true", help="rewrite the generated part of Pulumi.yaml in place")
    schema.set_defaults(handler=run_config_schema)


def _invalid(where: str, error: ConfigError) -> str:
    """Every problem on its own line under the stack it belongs to (as `pulumi preview` shows them)."""
    return f"{where}: invalid configuration\n" + "\n".join(f"  {problem}" for problem in error.problems)


def _run_stack(args: argparse.Namespace) -> RenderResult:
    """The program's render for ``--stack``/``--set``; every config problem at once as a UsageError."""
    from infra.render import run_program

    try:
        return run_program(args.stack, overrides=parse_set_overrides(args.set))
    except ConfigError as error:
        raise UsageError(_invalid(f"stack {args.stack}", error)) from None


def run_render(args: argparse.Namespace) -> int:
    from infra.render import write_render

    started = time.perf_counter()
    result = _run_stack(args)
    written = write_render(result, args.out)
    for region in result.config.regions:
        manifests = result.manifests(region.name)
        releases = result.helm_releases(region.name)
        log.info("%s: %d objects, %d Helm releases", region.name, len(manifests), len(releases))
    for path in written:
        print(path)
    log.info("rendered stack %s in %.1fs", args.stack, time.perf_counter() - started)
    return 0


def run_check_config(args: argparse.Namespace) -> int:
    """Every file is checked; ``<path>: ok`` on stdout for each valid one, the others' problems all at once."""
    failures = []
    for path in args.paths:
        name = path.name
        if not (name.startswith("Pulumi.") and name.endswith(".yaml")) or name == "Pulumi.yaml":
            failures.append(f"{path}: not a stack file (expected Pulumi.<stack>.yaml)")
            continue
        if not path.exists():
            failures.append(f"{path}: no such file")
            continue
        stack = name[len("Pulumi.") : -len(".yaml")]
        try:
            check_stack(read_stack_file(path), stack)
        except ConfigError as error:
            failures.append(_invalid(str(path), error))
        else:
            print(f"{path}: ok")
    if failures:
        raise UsageError("; ".join(failures))
    return 0


def run_charts_package(args: argparse.Namespace) -> int:
    from infra.chart_archives import CHARTS_DIR, ChartSourceError, package_chart, sha256_file

    try:
        path = package_chart(args.chart_dir, args.out or CHARTS_DIR, stamp_version=args.stamp_version)
    except (ChartSourceError, OSError) as error:
        raise UsageError(str(error)) from None
    print(f"{path}  sha256 {sha256_file(path)}  {path.stat().st_size} bytes")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from infra.verify.checks import CHECKS, format_table, platform_of, run_checks

    unknown = sorted(set(args.check or ()) - set(CHECKS))
    if unknown:
        raise UsageError(f"unknown check(s) {', '.join(unknown)}; checks: {', '.join(CHECKS)}")
    started = time.perf_counter()
    result = _run_stack(args)
    failed = 0
    for region in result.config.regions:
        log.info("%s: rendering %d Helm releases", region.name, len(result.helm_releases(region.name)))
        results = run_checks(platform_of(result, region.name), args.check)
        print(format_table(region.name, results, limit=10**6 if args.all_failures else 3))
        failed += sum(not r.ok for r in results)
    verdict = f"{failed} check(s) failed" if failed else "all checks passed"
    print(f"stack {args.stack}: {verdict} ({time.perf_counter() - started:.1f}s)")
    return 1 if failed else 0


def run_config_schema(args: argparse.Namespace) -> int:
    from infra.config.schema import generated_text, write_pulumi_yaml

    if args.write:
        changed = write_pulumi_yaml()
        log.info("Pulumi.yaml: %s", "updated" if changed else "already up to date")
    else:
        print(generated_text(), end="")
    return 0
