"""Paired labelled replay: every holdout transaction scored by the stable AND the candidate, labels fed back.

Whether a candidate is worse than the stable can only be judged on the same transactions with ground truth.
:func:`paired_replay` sends holdout batches (never seen in training, in time order) to both model servers,
posts each side's true labels to its ``POST /feedback`` with the ``prediction_id`` it returned (so both
count ``fraud_feedback_total`` under their own version, as the dashboard shows), and returns one
:class:`rollout.decision.LabelledPair` per transaction: the label and each side's flag, or None where a
side did not answer (5xx, timeout, unreachable, malformed answer). The decision service
(``ops/decision_service.py``) feeds those pairs to the sequential analysis; the rehearsal runs the same code
against local servers.

``python -m ops.replay run --stable URL --candidate URL`` replays one interval by hand and prints the
counts; ``serve`` starts the decision service.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from fraudctl.errors import UsageError

if TYPE_CHECKING:
    from rollout.decision import LabelledPair

DEFAULT_MODEL = "fraud-detector"
HOLDOUT_SOURCES = ("scenario", "synthetic")
# A side that does not answer within this many seconds counts as a non-answer for the batch.
REQUEST_TIMEOUT_SECONDS = 10.0


class ReplayError(ValueError):
    """Bad replay parameters or a broken target; the message says which and what is allowed."""


@dataclass(frozen=True)
class Transaction:
    features: dict[str, float]
    label: int


class Holdout:
    """Labelled transactions replayed in order, wrapping around; shared by concurrent webhook calls."""

    def __init__(self, transactions: Sequence[Transaction], feature_names: Sequence[str]) -> None:
        if not transactions:
            raise ReplayError("holdout: no transactions to replay")
        self.transactions = list(transactions)
        self.feature_names = list(feature_names)
        self.frauds = sum(t.label for t in self.transactions)
        self._next = 0
        self._lock = threading.Lock()

    def take(self, count: int) -> list[Transaction]:
        with self._lock:
            start = self._next
            self._next = (start + count) % len(self.transactions)
        return [self.transactions[(start + i) % len(self.transactions)] for i in range(count)]


def scenario_holdout(source: str | None = None) -> Holdout:
    """The real holdout (February and March 2024 of the drift scenario), as model/scenario.py defines it."""
    from model.data import FEATURE_COLUMNS
    from model.scenario import load_scenario

    scenario = load_scenario(source)
    rows = [Transaction(t.features, t.label) for t in scenario.iter_holdout()]
    return Holdout(rows, FEATURE_COLUMNS)


def synthetic_holdout(rows: int = 4000, seed: int = 7, fraud_share: float = 0.05) -> Holdout:
    """Generated transactions (serving/synthetic_model.py) for tests and clusters without the dataset."""
    from serving.synthetic_model import FEATURE_NAMES, synthetic_transactions

    frame, labels = synthetic_transactions(rows, seed=seed, fraud_share=fraud_share)
    records = frame.to_dict(orient="records")
    return Holdout([Transaction(r, int(y)) for r, y in zip(records, labels, strict=True)], FEATURE_NAMES)


def holdout_from_rows(
    feature_names: Sequence[str], rows: Sequence[Sequence[float]], labels: Sequence[int], *, fraud_share: float
) -> Holdout:
    """A holdout resampled to ``fraud_share`` frauds (deterministic interleave), e.g. the rehearsal's replay mix.

    The paired comparison does not depend on the mix (both models see the same transactions); the share
    only sets how fast labelled frauds arrive.
    """
    frauds = [i for i, y in enumerate(labels) if y]
    legit = [i for i, y in enumerate(labels) if not y]
    if not frauds or not legit:
        raise ReplayError("holdout: needs both frauds and legitimate transactions")
    if not 0.0 < fraud_share < 1.0:
        raise ReplayError(f"fraud_share: must be in (0, 1), got {fraud_share!r}")
    names = list(feature_names)
    order: list[int] = []
    owed = 0.0
    legit_at = fraud_at = 0
    # Walk the legitimate rows in time order, inserting frauds (in time order) at the requested share.
    while legit_at < len(legit):
        owed += fraud_share / (1.0 - fraud_share)
        order.append(legit[legit_at])
        legit_at += 1
        while owed >= 1.0:
            order.append(frauds[fraud_at % len(frauds)])
            fraud_at += 1
            owed -= 1.0
    transactions = [Transaction(dict(zip(names, map(float, rows[i]), strict=True)), int(labels[i])) for i in order]
    return Holdout(transactions, names)


@dataclass
class SideCounts:
    """What one side (stable or candidate) did during a replay."""

    url: str
    requests: int = 0
    answered: int = 0  # transactions answered with a valid decision
    server_errors: int = 0  # requests answered 5xx
    client_errors: int = 0  # requests answered 4xx (a protocol mismatch: our bug or theirs)
    invalid: int = 0  # requests answered 200 with an unusable body
    unreachable: int = 0  # requests that never got an answer (refused, timed out)
    feedback_accepted: int = 0
    feedback_refused: int = 0
    error: str = ""  # the last problem, in words

    @property
    def down(self) -> bool:
        """Nothing answered at all although requests were sent."""
        return self.requests > 0 and self.answered == 0


@dataclass
class PairedResult:
    """One paired replay: the pairs for the analysis and both sides' counts."""

    stable: SideCounts
    candidate: SideCounts
    pairs: list[LabelledPair] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def transactions(self) -> int:
        return len(self.pairs)

    @property
    def labelled_frauds(self) -> int:
        return sum(1 for p in self.pairs if p.is_fraud)

    def to_json(self) -> dict[str, Any]:
        return {
            "transactions": self.transactions,
            "labelled_frauds": self.labelled_frauds,
            "seconds": self.seconds,
            "stable": {**asdict(self.stable), "down": self.stable.down},
            "candidate": {**asdict(self.candidate), "down": self.candidate.down},
        }


class _Side:
    """One model server (one or more pods) during a replay: predict a batch, post its labels, count.

    Batches rotate over ``urls`` (the pods of one ReplicaSet, or one Service); no URL at all (no ready pod)
    makes every batch a non-answer, with ``missing`` as the reason.
    """

    def __init__(self, urls: Sequence[str], model: str, timeout: float, missing: str) -> None:
        from serving.client import FraudClient

        self.counts = SideCounts(url=",".join(urls))
        self.clients = [FraudClient(url, model, timeout=timeout) for url in urls]
        self.missing = missing
        self._turn = 0

    def score(self, batch: Sequence[Transaction], feature_names: Sequence[str]) -> list[bool | None]:
        """Each transaction's flag, or None for all of them when the side did not answer usefully."""
        import httpx

        from serving.client import ServingHTTPError

        counts, missing = self.counts, [None] * len(batch)
        counts.requests += 1
        if not self.clients:
            counts.unreachable += 1
            counts.error = self.missing
            return missing
        client = self.clients[self._turn % len(self.clients)]
        self._turn += 1
        try:
            answer = client.predict([t.features for t in batch], feature_names)
        except ServingHTTPError as exc:
            if exc.status_code >= 500:
                counts.server_errors += 1
            else:
                counts.client_errors += 1
            counts.error = f"HTTP {exc.status_code} {exc.message}"[:300]
            return missing
        except httpx.HTTPError as exc:
            counts.unreachable += 1
            counts.error = f"{client.base_url} did not answer: {type(exc).__name__} {exc}"[:300]
            return missing
        except (ValueError, KeyError, TypeError) as exc:
            counts.invalid += 1
            counts.error = f"unusable answer: {exc}"[:300]
            return missing
        probabilities_ok = all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in answer.probabilities)
        if len(answer.rows) != len(batch) or not probabilities_ok or not all(answer.prediction_ids):
            counts.invalid += 1
            counts.error = f"unusable answer: {len(answer.rows)} rows for {len(batch)}, or bad probabilities/ids"
            return missing
        counts.answered += len(batch)
        self._feedback(client, answer.prediction_ids, [t.label for t in batch])
        return list(answer.decisions)

    def _feedback(self, client: Any, prediction_ids: list[str], labels: list[int]) -> None:
        import httpx

        from serving.client import ServingHTTPError

        try:
            self.counts.feedback_accepted += client.feedback(prediction_ids, labels).accepted
        except (ServingHTTPError, httpx.HTTPError, ValueError, KeyError) as exc:
            self.counts.feedback_refused += len(labels)
            self.counts.error = f"feedback refused: {exc}"[:300]

    def close(self) -> None:
        for client in self.clients:
            client.close()


def paired_replay(
    stable: str | Sequence[str],
    candidate: str | Sequence[str],
    holdout: Holdout,
    *,
    model: str = DEFAULT_MODEL,
    transactions: int,
    batch_size: int = 32,
    timeout_seconds: float = 60.0,
    spread_seconds: float = 0.0,
    should_stop: Callable[[], bool] = lambda: False,
) -> PairedResult:
    """Replay up to ``transactions`` holdout transactions to both sides within ``timeout_seconds``.

    ``stable`` / ``candidate``: a base URL, or the URLs of one side's pods (batches rotate over them;
    none: that side has no ready pod and every batch is its non-answer). ``spread_seconds``: pace the batches
    evenly over this long instead of sending them at once, so the replay does not crowd out production
    traffic (nor inflate the latency the system checks read).

    Both sides get each batch at the same time (one thread each). A side that stops answering keeps getting
    its share (its non-answers are evidence: a dead stable halts the rollout, a dead candidate holds it and
    fails its success-rate check), but once BOTH sides failed a whole batch the replay ends early: there is
    nothing left to compare.
    """
    from concurrent.futures import ThreadPoolExecutor

    from rollout.decision import LabelledPair

    started = time.monotonic()
    request_timeout = min(REQUEST_TIMEOUT_SECONDS, timeout_seconds)
    stable_side = _Side(_urls(stable), model, request_timeout, "the stable has no ready pod")
    candidate_side = _Side(_urls(candidate), model, request_timeout, "the candidate has no ready pod")
    result = PairedResult(stable=stable_side.counts, candidate=candidate_side.counts)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-candidate")
    try:
        while result.transactions < transactions and time.monotonic() - started < timeout_seconds:
            if should_stop():
                break
            if spread_seconds > 0:
                due = started + spread_seconds * result.transactions / transactions
                time.sleep(max(0.0, min(due, started + timeout_seconds) - time.monotonic()))
            batch = holdout.take(min(batch_size, transactions - result.transactions))
            candidate_answer = pool.submit(candidate_side.score, batch, holdout.feature_names)
            stable_flags = stable_side.score(batch, holdout.feature_names)
            candidate_flags = candidate_answer.result()
            result.pairs += [
                LabelledPair(is_fraud=bool(t.label), stable_flagged=s, candidate_flagged=c)
                for t, s, c in zip(batch, stable_flags, candidate_flags, strict=True)
            ]
            if stable_flags[0] is None and candidate_flags[0] is None:
                break
    finally:
        pool.shutdown(wait=True)
        stable_side.close()
        candidate_side.close()
    result.seconds = round(time.monotonic() - started, 3)
    return result


def _urls(side: str | Sequence[str]) -> list[str]:
    return [side] if isinstance(side, str) else list(side)


def smoke(target: str, holdout: Holdout, *, model: str = DEFAULT_MODEL, rows: int = 8) -> dict[str, Any]:
    """One batch through the whole protocol; raises ReplayError naming what is broken."""
    import httpx

    from serving.client import FraudClient, ServingHTTPError

    batch = holdout.take(rows)
    with FraudClient(target, model, timeout=30.0) as client:
        try:
            ready = httpx.get(f"{target}/v2/models/{model}/ready", timeout=10.0)
            if ready.status_code != 200:
                raise ReplayError(f"{target}: model {model} is not ready (HTTP {ready.status_code})")
            answer = client.predict([t.features for t in batch], holdout.feature_names)
            if len(answer.rows) != len(batch):
                raise ReplayError(f"{target}: {len(batch)} rows sent, {len(answer.rows)} answered")
            bad = [p for p in answer.probabilities if not (math.isfinite(p) and 0.0 <= p <= 1.0)]
            if bad:
                raise ReplayError(f"{target}: fraud_probability outside [0, 1]: {bad[:3]}")
            if not all(answer.prediction_ids):
                raise ReplayError(f"{target}: a row came back without a prediction_id")
            accepted = client.feedback(answer.prediction_ids, [t.label for t in batch]).accepted
        except ReplayError:
            raise
        except ServingHTTPError as exc:
            raise ReplayError(f"{target}: HTTP {exc.status_code} {exc.message}") from None
        except httpx.HTTPError as exc:
            raise ReplayError(f"{target} is unreachable: {type(exc).__name__} {exc}") from None
        except (ValueError, KeyError) as exc:
            raise ReplayError(f"{target}: unusable answer: {exc}") from None
    if accepted != len(batch):
        raise ReplayError(f"{target}: feedback accepted for {accepted} of {len(batch)} predictions")
    return {"ok": True, "target": target, "model_version": answer.model_version, "rows": len(batch)}


# ---------------------------------------------------------------------------------------------------
# Command line: ``python -m ops.replay serve|run`` (also ``fraudctl replay ...`` via register()).


def holdout_loader(kind: str, source: str | None) -> Callable[[], Holdout]:
    if kind not in HOLDOUT_SOURCES:
        raise ReplayError(f"holdout: must be one of {', '.join(HOLDOUT_SOURCES)}, got {kind!r}")
    if kind == "synthetic":
        return synthetic_holdout
    return lambda: scenario_holdout(source)


def _add_arguments(serve: argparse.ArgumentParser, run: argparse.ArgumentParser) -> None:
    for parser in (serve, run):
        parser.add_argument("--holdout", choices=HOLDOUT_SOURCES, default="scenario", help="transactions to replay")
        parser.add_argument("--source", help="dataset file or URL for --holdout scenario (else $FRAUD_DATA_SOURCE)")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument(
        "--transactions", type=int, default=None, help="labelled pairs replayed per interval (default: the plan's)"
    )
    serve.add_argument("--kubernetes", action="store_true", help="find Argo's pods by hash through the API server")
    serve.set_defaults(handler=_serve)
    run.add_argument("--stable", required=True, help="stable model server base URL, e.g. http://127.0.0.1:8080")
    run.add_argument("--candidate", required=True, help="candidate model server base URL")
    run.add_argument("--model", default=DEFAULT_MODEL)
    run.add_argument("--transactions", type=int, default=2000, help="transactions to replay (default 2000)")
    run.add_argument("--batch-size", type=int, default=32)
    run.add_argument("--timeout", type=float, default=60.0, help="seconds at most (default 60)")
    run.set_defaults(handler=run_once)


def register(commands: Any, bench: Any) -> None:
    replay_parser = commands.add_parser(
        "replay", help="paired labelled replay and the rollout decision service (Flagger/Argo webhooks)"
    )
    actions = replay_parser.add_subparsers(dest="replay_command", required=True, metavar="ACTION")
    _add_arguments(
        actions.add_parser("serve", help="run the decision service (ops/decision_service.py)"),
        actions.add_parser("run", help="replay once to a stable and a candidate; print the counts as JSON"),
    )


def _serve(args: argparse.Namespace) -> int:
    from ops.decision_service import run_serve

    return run_serve(args)


def run_once(args: argparse.Namespace) -> int:
    for flag, value, low, high in (
        ("--transactions", args.transactions, 1, 10_000_000),
        ("--batch-size", args.batch_size, 1, 1_000),
        ("--timeout", args.timeout, 1, 3_600),
    ):
        if not low <= value <= high:
            raise UsageError(f"{flag}: must be in [{low}, {high}], got {value}")
    for flag, url in (("--stable", args.stable), ("--candidate", args.candidate)):
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"{flag}: must be an http(s) base URL, got {url!r}")
    holdout = holdout_loader(args.holdout, args.source)()
    result = paired_replay(
        args.stable.rstrip("/"),
        args.candidate.rstrip("/"),
        holdout,
        model=args.model,
        transactions=args.transactions,
        batch_size=args.batch_size,
        timeout_seconds=args.timeout,
    )
    print(json.dumps(result.to_json(), indent=2))
    return 0 if not (result.stable.down or result.candidate.down) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ops.replay``, the decision service's container command: not fraudctl, so it sets up the same
    logging (one stderr handler, progress at INFO) and error convention itself."""
    from fraudctl.cli import run, setup_logging

    parser = argparse.ArgumentParser(prog="python -m ops.replay", description=__doc__.splitlines()[0])
    actions = parser.add_subparsers(dest="replay_command", required=True, metavar="ACTION")
    _add_arguments(
        actions.add_parser("serve", help="run the decision service (ops/decision_service.py)"),
        actions.add_parser("run", help="replay once to a stable and a candidate; print the counts as JSON"),
    )
    args = parser.parse_args(argv)
    setup_logging()
    return run(args, "replay")


if __name__ == "__main__":
    sys.exit(main())
