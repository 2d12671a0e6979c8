"""``fraudctl rehearse``: the whole rollout on one machine, with real parts, before anything touches a cluster."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from fraudctl.errors import UsageError

log = logging.getLogger(__name__)


def register(commands: Any, bench: Any) -> None:
    parser = commands.add_parser(
        "rehearse",
        help="rehearse the model rollout locally: train, serve v1/v2, analyse, promote or roll back",
        description=__doc__,
    )
    parser.add_argument("--stack", default="dev", help="stack whose config drives the rollout (default dev)")
    parser.add_argument("--strategy", choices=("canary", "blue-green"), help="override the stack's strategy")
    parser.add_argument("--inject-fault", choices=("error", "degrade"), help="set SIMULATE_ERROR on the candidate")
    parser.add_argument(
        "--at-step", type=int, default=None, help="analysis step (1-based) at which the fault starts (default 2)"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=None,
        help="seconds per analysis interval (default: the stack's, capped at 10)",
    )
    parser.add_argument("--fraud-share", type=float, default=0.2, help="share of frauds in the replayed traffic")
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help="folder for the reports: one folder per run and a 'latest' link (default $FRAUD_HOME/reports/rehearsal)",
    )
    parser.add_argument("--data", default=None, help="dataset: a local path or URL (default: the cached ULB file)")
    parser.add_argument("--ignore-gate", action="store_true", help="roll out even if the offline gate rejects v2")
    parser.add_argument("--json", action="store_true", help="print the JSON record on stdout")
    parser.set_defaults(handler=run)

    stop_bench = bench.add_parser(
        "rehearsal-stop",
        help="stop a real rehearsal at its first analysis step; seconds until nothing of it is left",
        description=(
            "Runs fraudctl rehearse in $FRAUD_HOME (models are trained the first time), sends it --signal at its "
            "first analysis step and measures, from /proc, the seconds until its ports are free, its processes "
            "gone and its folders removed."
        ),
    )
    stop_bench.add_argument("--signal", choices=("KILL", "TERM", "INT"), default="KILL", help="default KILL")
    stop_bench.add_argument("--runs", type=int, default=3, help="rehearsals to stop (default 3)")
    stop_bench.add_argument("--interval", type=float, default=5.0, help="the rehearsal's --interval (default 5)")
    stop_bench.add_argument("--stack", default="dev", help="the rehearsal's --stack (default dev)")
    stop_bench.add_argument("--json", action="store_true", help="print JSON (the only output format)")
    stop_bench.set_defaults(handler=_bench_stop)


def _validate(args: argparse.Namespace) -> None:
    if args.inject_fault is None and args.at_step is not None:
        raise UsageError("--at-step: only meaningful with --inject-fault error|degrade")
    if args.at_step is not None and args.at_step < 1:
        raise UsageError(f"--at-step: must be 1 or more, got {args.at_step}")
    if args.interval is not None and not 2 <= args.interval <= 600:
        raise UsageError(f"--interval: must be between 2 and 600 seconds, got {args.interval:g}")
    if not 0.01 <= args.fraud_share <= 0.9:
        raise UsageError(f"--fraud-share: must be in [0.01, 0.9], got {args.fraud_share:g}")


def run(args: argparse.Namespace) -> int:
    """Exit 0 on a rollout decision, 1 when the gate rejects the candidate or something fails, 2 for bad input or
    local state, 128+N on signal N (130 Ctrl-C, 143 SIGTERM); every one but bad input leaves a report."""
    from infra.config import ConfigError, load_stack
    from rehearsal.run import RehearsalOptions, rehearse

    _validate(args)
    try:
        config = load_stack(args.stack, overrides={"strategy": args.strategy} if args.strategy else None)
    except ConfigError as error:
        raise UsageError("; ".join(error.problems)) from None
    options = RehearsalOptions(
        fault=args.inject_fault,
        at_step=2 if args.at_step is None else args.at_step,
        interval_seconds=args.interval,
        fraud_share=args.fraud_share,
        report_dir=args.report,
        data_source=args.data,
        ignore_gate=args.ignore_gate,
    )
    data = rehearse(config, options)  # handles Ctrl-C, SIGTERM and SIGHUP itself (rehearsal/processes.py)
    if args.json:
        print(json.dumps(data, indent=2))
    return int(data["exit_code"])


def _bench_stop(args: argparse.Namespace) -> int:
    import signal

    from model.paths import fraud_home
    from rehearsal.bench import BenchError, run_bench

    if not 1 <= args.runs <= 20:
        raise UsageError(f"--runs: must be between 1 and 20, got {args.runs}")
    if not 2 <= args.interval <= 600:
        raise UsageError(f"--interval: must be between 2 and 600 seconds, got {args.interval:g}")
    try:
        result = run_bench(
            signal.Signals[f"SIG{args.signal}"],
            args.runs,
            fraud_home(),
            ["--interval", f"{args.interval:g}", "--stack", args.stack],
        )
    except BenchError as error:
        log.error("bench rehearsal-stop: %s", error)
        return 1
    print(json.dumps(result, indent=2))
    return 0
