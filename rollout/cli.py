"""``fraudctl analysis plan | simulate``: what a stack's rollout analysis decides, before anything rolls.

* ``plan``: per canary step the expected labelled frauds, the probability that a healthy candidate gets
  past it, the probability that a candidate worse by ``minDetectableDrop`` is caught, the expected time to
  a decision (rollout/plan.py). A configuration that cannot decide within its steps exits 2, naming the
  keys and the replay rate that would do.
* ``simulate``: Monte-Carlo of the same rule on streams drawn from the real holdout scored by the
  registered v1 and v2 (rollout/simulate.py): healthy, subtle, broken and primary-down rollouts, with a
  chart of the operating characteristic.

Progress goes to stderr (logging), results to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from fraudctl.errors import UsageError

log = logging.getLogger(__name__)


def register(commands: Any, bench: Any) -> None:
    group = commands.add_parser("analysis", help="plan and simulate the rollout analysis of a stack")
    sub = group.add_subparsers(dest="analysis_command", required=True, metavar="SUBCOMMAND")

    plan = sub.add_parser(
        "plan",
        help="what the stack's analysis decides, how often wrongly and how soon (exit 2: it cannot decide)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _stack_flags(plan)
    plan.add_argument(
        "--runs", type=int, default=None, help="Monte-Carlo rollouts per planned candidate (default 2000)"
    )
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(handler=run_plan)

    simulate = sub.add_parser(
        "simulate",
        help="Monte-Carlo of the analysis on the real holdout scores of v1 and v2 (four scenarios, a chart)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _stack_flags(simulate)
    simulate.add_argument("--runs", type=int, default=10_000, help="rollouts per scenario (default 10000)")
    simulate.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    simulate.add_argument(
        "--fault-at", type=int, default=2, help="interval at which the broken / primary-down fault starts (default 2)"
    )
    simulate.add_argument("--data", default=None, help="dataset: a local path or URL (default: the cached ULB file)")
    simulate.add_argument(
        "--chart", type=Path, default=None, help="PNG path (default $FRAUD_HOME/reports/analysis-simulate.png)"
    )
    simulate.add_argument("--json", action="store_true", help="print the result as JSON")
    simulate.set_defaults(handler=run_simulate)


def _stack_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stack", default="dev", help="stack whose analysis settings to use (default dev)")
    parser.add_argument(
        "--rps",
        type=float,
        default=None,
        help="labelled pairs per second the replay sends (default analysis.replayRate)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=None,
        help="seconds per interval (default analysis.interval; e.g. a rehearsal's compressed one)",
    )


def _load(args: argparse.Namespace) -> Any:
    """The stack config with the flags' overrides, or a usage error naming every problem."""
    from infra.config import ConfigError, load_stack

    if args.rps is not None and not (math.isfinite(args.rps) and args.rps > 0):
        raise UsageError(f"--rps: must be a positive number of labelled pairs per second, got {args.rps:g}")
    if args.interval is not None and not (math.isfinite(args.interval) and args.interval > 0):
        raise UsageError(f"--interval: must be a positive number of seconds, got {args.interval:g}")
    try:
        return load_stack(args.stack)
    except ConfigError as error:
        raise UsageError("; ".join(error.problems)) from None


def run_plan(args: argparse.Namespace) -> int:
    from rollout.plan import PLAN_RUNS, plan

    if args.runs is not None and args.runs < 100:
        raise UsageError(f"--runs: must be 100 or more, got {args.runs}")
    config = _load(args)
    result = plan(config.analysis, args.rps, interval_seconds=args.interval, runs=args.runs or PLAN_RUNS)
    if args.json:
        print(json.dumps({"stack": args.stack, **result.to_json()}, indent=2))
    else:
        print(format_plan(args.stack, result))
    problems = result.problems()
    if problems:
        raise UsageError("; ".join(problems))
    return 0


def format_plan(stack: str, result: Any) -> str:
    s, d = result.settings, result.design
    lines = [
        f"analysis plan, stack {stack}: {result.rps:g} labelled pairs/s x {result.interval_seconds:g} s = "
        f"{result.pairs_per_interval} pairs per interval ({result.expected_frauds_per_interval:.0f} frauds at "
        f"{s.replay_fraud_share:.0%})",
        f"rule: 4 sequential checks (recall and precision vs the stable, floors minRecall {s.min_recall:g} and "
        f"minPrecision {s.min_precision:g}), falseRollbackRate {s.false_rollback_rate:g} split 4 ways, "
        f"missRate {s.miss_rate:g}, minDetectableDrop {s.min_detectable_drop:g}: fail at LLR >= "
        f"{d.fail_boundary:.2f}, pass at <= {d.pass_boundary:.2f}; at least {s.min_labelled_frauds} labelled "
        f"frauds; forced at the horizon, {s.horizon} intervals",
        "",
        f"{'step':>4}  {'weight':>6}  {'left after':>10}  {'labelled frauds':>15}  "
        f"{'P(healthy past)':>15}  {'P(recall drop caught)':>21}  {'P(precision drop caught)':>24}",
    ]
    for index, step in enumerate(result.steps, start=1):
        left = _seconds(step.expected_seconds_left)
        lines.append(
            f"{index:>4}  {step.weight:>5}%  {left:>10}  {step.expected_labelled_frauds:>15.0f}  "
            f"{step.promote_healthy:>15.3f}  {step.catch_recall_drop:>21.3f}  {step.catch_precision_drop:>24.3f}"
        )
    lines += [
        "",
        f"promote a healthy candidate: {1 - result.false_rollback:.3f} (stated: at least "
        f"{1 - s.false_rollback_rate:g}); catch a drop of {s.min_detectable_drop:g} in recall: "
        f"{1 - result.miss_recall:.3f}, in precision: {1 - result.miss_precision:.3f} (stated: at least "
        f"{1 - s.miss_rate:g})",
        f"expected time to promotion {_seconds(result.seconds_to_promotion)}, to a rollback "
        f"{_seconds(result.seconds_to_rollback)}; decided at the horizon in {result.forced_share:.1%} of healthy "
        "rollouts",
        f"planning point: the stable at the floors, the candidate as good (healthy) or worse by the drop, flags "
        f"independent given the label (conservative; real models agree more); Monte-Carlo of {result.runs} "
        "rollouts each",
    ]
    if result.required_rps is not None:
        lines.append(f"the stated error rates need a replay of at least {result.required_rps:.3g} pairs/s")
    return "\n".join(lines)


def _seconds(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f} s"


def run_simulate(args: argparse.Namespace) -> int:
    from model.paths import reports_dir
    from rollout.decision import Design
    from rollout.simulate import SimulationError, load_holdout, operating_characteristic, simulate, write_chart

    if args.runs < 1:
        raise UsageError(f"--runs: must be 1 or more, got {args.runs}")
    if args.fault_at < 1:
        raise UsageError(f"--fault-at: must be interval 1 or later, got {args.fault_at}")
    config = _load(args)
    last = Design.from_settings(config.analysis).max_looks
    if args.fault_at > last:
        raise UsageError(f"--fault-at: must be at most {last} (analysis.horizon + the number of steps)")
    started = time.monotonic()
    try:
        holdout = load_holdout(config, data_source=args.data)
        common = {"seed": args.seed, "rps": args.rps, "interval_seconds": args.interval}
        result = simulate(config.analysis, holdout, runs=args.runs, fault_at=args.fault_at, **common)
        characteristic = operating_characteristic(config.analysis, holdout, runs=max(500, args.runs // 5), **common)
    except SimulationError as error:  # the model package's own (no data, no models) are UsageErrors already
        raise UsageError(str(error)) from None
    chart = write_chart(args.chart or reports_dir() / "analysis-simulate.png", characteristic, result, config.analysis)
    result = {
        "stack": args.stack,
        **result,
        "operating_characteristic": characteristic,
        "chart": str(chart),
        "date": time.strftime("%Y-%m-%d"),
        "seconds": round(time.monotonic() - started, 1),
    }
    log.info("simulate: chart %s", chart)
    print(json.dumps(result, indent=2) if args.json else format_simulation(result))
    return 0


def format_simulation(result: dict[str, Any]) -> str:
    lines = [
        f"stack {result['stack']}: {result['runs']:,} rollouts per scenario, {result['pairs_per_interval']} labelled "
        f"pairs per interval of {result['interval_seconds']} s, faults from interval {result['fault_at_interval']}",
        "",
        f"{'scenario':<14} {'promote':>8} {'rollback':>9} {'halt':>7} {'median s to decision':>21} "
        f"{'rolled back within one interval':>31}",
    ]
    for name, row in result["scenarios"].items():
        median = row["median_seconds_to_decision"]
        within = row.get("rolled_back_within_one_interval")
        lines.append(
            f"{name:<14} {row['promote_rate']:>8.4f} {row['rollback_rate']:>9.4f} {row['halt_rate']:>7.4f} "
            f"{'-' if median is None else f'{median:.0f}':>21} {'' if within is None else f'{within:.4f}':>31}"
        )
    lines += ["", "targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in result["targets"].items())]
    lines.append(f"chart: {result['chart']}")
    return "\n".join(lines)
