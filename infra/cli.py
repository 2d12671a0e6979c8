"""``fraudctl render`` and ``fraudctl check-config``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from infra.config import ConfigError, check_stack, parse_set_overrides, read_stack_file


def register(commands: Any, bench: Any) -> None:
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

    schema = commands.add_parser(
        "config-schema", help="print Pulumi.yaml's config: block as the config models declare it (--write: update it)"
    )
    schema.add_argument("--write", action="store_true", help="rewrite the generated part of Pulumi.yaml in place")
    schema.set_defaults(handler=run_config_schema)


def _print_problems(error: ConfigError, where: str) -> None:
    print(f"{where}: invalid configuration", file=sys.stderr)
    for problem in error.problems:
        print(f"  {problem}", file=sys.stderr)


def run_render(args: argparse.Namespace) -> int:
    from infra.render import run_program, write_render

    started = time.perf_counter()
    try:
        result = run_program(args.stack, overrides=parse_set_overrides(args.set))
    except ConfigError as error:
        _print_problems(error, f"stack {args.stack}")
        return 2
    written = write_render(result, args.out)
    for region in result.config.regions:
        manifests = result.manifests(region.name)
        releases = result.helm_releases(region.name)
        print(f"{region.name}: {len(manifests)} objects, {len(releases)} Helm releases", file=sys.stderr)
    for path in written:
        print(path)
    print(f"rendered stack {args.stack} in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return 0


def run_check_config(args: argparse.Namespace) -> int:
    failed = False
    for path in args.paths:
        name = path.name
        if not (name.startswith("Pulumi.") and name.endswith(".yaml")) or name == "Pulumi.yaml":
            print(f"{path}: not a stack file (expected Pulumi.<stack>.yaml)", file=sys.stderr)
            failed = True
            continue
        if not path.exists():
            print(f"{path}: no such file", file=sys.stderr)
            failed = True
            continue
        stack = name[len("Pulumi.") : -len(".yaml")]
        try:
            check_stack(read_stack_file(path), stack)
        except ConfigError as error:
            _print_problems(error, str(path))
            failed = True
        else:
            print(f"{path}: ok")
    return 2 if failed else 0


def run_config_schema(args: argparse.Namespace) -> int:
    from infra.config.schema import generated_text, write_pulumi_yaml

    if args.write:
        changed = write_pulumi_yaml()
        print(f"Pulumi.yaml: {'updated' if changed else 'already up to date'}", file=sys.stderr)
    else:
        print(generated_text(), end="")
    return 0
