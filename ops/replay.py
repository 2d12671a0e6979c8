"""Labelled traffic replay: the project's own rollout webhook, so the analysis has ground truth to judge.

Precision and recall of a candidate can only be measured from labelled feedback. During a rollout this
service replays holdout transactions (never seen in training) against the candidate, in time order, and
posts each answer's true label to ``POST /feedback`` with the ``prediction_id`` the candidate returned;
the candidate then counts ``fraud_feedback_total`` under its own version, which the analysis reads.

It runs from the project image as a small Deployment (``python -m ops.replay serve``) because the
Flagger load tester's image cannot run project code. Endpoints (JSON in, JSON out):

* ``POST /smoke``: one small batch against the target: ready, valid probabilities, signed ids, feedback
  accepted. Flagger's pre-rollout webhook; non-2xx fails it.
* ``POST /replay``: replay until ``minFrauds`` labelled frauds were accepted (or ``maxTransactions`` sent,
  or ``timeoutSeconds``). Flagger's pre-rollout and rollout webhooks, Argo Rollouts' ``web`` metric.
  Answers 200 with counts when the target was reachable (its own 5xx answers are the success-rate
  check's business, not a replay failure), 502 when it was not.
* ``GET /healthz``: 200 once the holdout is loaded.

Bodies are either the parameters themselves or Flagger's webhook payload, whose ``metadata`` holds them
as strings: ``target`` (base URL, must start with one of ``REPLAY_ALLOWED_TARGETS``), ``model``,
``minFrauds``, ``maxTransactions``, ``batchSize``, ``timeoutSeconds``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_PORT = 8080
ALLOWED_TARGETS_ENV = "REPLAY_ALLOWED_TARGETS"
HOLDOUT_SOURCES = ("scenario", "synthetic")
DEFAULTS: dict[str, Any] = {
    "model": "fraud-detector",
    "minFrauds": 20,
    "maxTransactions": 50_000,
    "batchSize": 32,
    "timeoutSeconds": 100.0,
}
_LIMITS: dict[str, tuple[float, float]] = {
    "minFrauds": (0, 100_000),
    "maxTransactions": (1, 10_000_000),
    "batchSize": (1, 1_000),
    "timeoutSeconds": (1, 3_600),
}


class ReplayError(ValueError):
    """Bad replay parameters; the message says which and what is allowed."""


@dataclass(frozen=True)
class Transaction:
    features: dict[str, float]
    label: int


@dataclass
class ReplayResult:
    target: str
    transactions: int = 0
    requests: int = 0
    server_errors: int = 0
    client_errors: int = 0
    labelled: int = 0
    labelled_frauds: int = 0
    feedback_refused: int = 0
    seconds: float = 0.0
    reachable: bool = True
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.reachable

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


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
    from model.progress import stderr_report
    from model.scenario import load_scenario

    scenario = load_scenario(source, report=stderr_report("replay"))
    rows = [Transaction(t.features, t.label) for t in scenario.iter_holdout()]
    return Holdout(rows, FEATURE_COLUMNS)


def synthetic_holdout(rows: int = 4000, seed: int = 7, fraud_share: float = 0.05) -> Holdout:
    """Generated transactions (serving/synthetic_model.py) for tests and clusters without the dataset."""
    from serving.synthetic_model import FEATURE_NAMES, synthetic_transactions

    frame, labels = synthetic_transactions(rows, seed=seed, fraud_share=fraud_share)
    records = frame.to_dict(orient="records")
    return Holdout([Transaction(r, int(y)) for r, y in zip(records, labels, strict=True)], FEATURE_NAMES)


def replay(
    target: str,
    holdout: Holdout,
    *,
    model: str = DEFAULTS["model"],
    min_frauds: int = DEFAULTS["minFrauds"],
    max_transactions: int = DEFAULTS["maxTransactions"],
    batch_size: int = DEFAULTS["batchSize"],
    timeout_seconds: float = DEFAULTS["timeoutSeconds"],
    progress: Callable[[ReplayResult], None] | None = None,
) -> ReplayResult:
    """Send holdout batches to ``target`` and post their labels until ``min_frauds`` frauds are labelled
    (0: until ``max_transactions``), or ``timeout_seconds`` pass, or the target stops answering."""
    import httpx

    from serving.client import FraudClient, ServingHTTPError

    result = ReplayResult(target=target)
    started = time.monotonic()
    with FraudClient(target, model, timeout=min(30.0, timeout_seconds)) as client:
        # minFrauds 0: no fraud target, send maxTransactions (e.g. plain load on a faulty candidate).
        while (min_frauds == 0 or result.labelled_frauds < min_frauds) and result.transactions < max_transactions:
            if time.monotonic() - started > timeout_seconds:
                break
            batch = holdout.take(min(batch_size, max_transactions - result.transactions))
            result.transactions += len(batch)
            result.requests += 1
            try:
                answer = client.predict([t.features for t in batch], holdout.feature_names)
            except ServingHTTPError as exc:
                if exc.status_code >= 500:
                    result.server_errors += 1
                else:
                    result.client_errors += 1
                continue
            except httpx.TransportError as exc:
                result.reachable, result.error = False, f"{target} is unreachable: {exc}"
                break
            labels = [t.label for t in batch]
            try:
                accepted = client.feedback(answer.prediction_ids, labels).accepted
            except ServingHTTPError as exc:
                result.feedback_refused += len(batch)
                result.error = f"feedback refused: HTTP {exc.status_code} {exc.message}"
                continue
            except httpx.TransportError as exc:
                result.reachable, result.error = False, f"{target} is unreachable: {exc}"
                break
            result.labelled += accepted
            if accepted == len(batch):
                result.labelled_frauds += sum(labels)
            if progress is not None and result.requests % 50 == 0:
                progress(result)
    result.seconds = round(time.monotonic() - started, 3)
    return result


def smoke(target: str, holdout: Holdout, *, model: str = DEFAULTS["model"], rows: int = 8) -> dict[str, Any]:
    """One batch through the whole protocol; raises ReplayError naming what is broken."""
    import httpx

    from serving.client import FraudClient, ServingHTTPError

    batch = holdout.take(rows)
    with FraudClient(target, model, timeout=30.0) as client:
        try:
            if not client.ready():
                raise ReplayError(f"{target}: model {model} is not ready")
            answer = client.predict([t.features for t in batch], holdout.feature_names)
            if len(answer.rows) != len(batch):
                raise ReplayError(f"{target}: {len(batch)} rows sent, {len(answer.rows)} answered")
            bad = [p for p in answer.probabilities if not (math.isfinite(p) and 0.0 <= p <= 1.0)]
            if bad:
                raise ReplayError(f"{target}: fraud_probability outside [0, 1]: {bad[:3]}")
            if not all(answer.prediction_ids):
                raise ReplayError(f"{target}: a row came back without a prediction_id")
            accepted = client.feedback(answer.prediction_ids, [t.label for t in batch]).accepted
        except ServingHTTPError as exc:
            raise ReplayError(f"{target}: HTTP {exc.status_code} {exc.message}") from None
        except httpx.TransportError as exc:
            raise ReplayError(f"{target} is unreachable: {exc}") from None
    if accepted != len(batch):
        raise ReplayError(f"{target}: feedback accepted for {accepted} of {len(batch)} predictions")
    return {"ok": True, "target": target, "model_version": answer.model_version, "rows": len(batch)}


def parse_params(body: Any, allowed_targets: Sequence[str]) -> dict[str, Any]:
    """Replay parameters from a plain JSON object or a Flagger webhook payload (``metadata``)."""
    if not isinstance(body, Mapping):
        raise ReplayError("body must be a JSON object (parameters, or a Flagger webhook payload with metadata)")
    raw = body.get("metadata") if isinstance(body.get("metadata"), Mapping) else body
    target = raw.get("target")
    if not isinstance(target, str) or not target.startswith(("http://", "https://")):
        raise ReplayError(f"target: must be the http(s) base URL of the model server, got {target!r}")
    if allowed_targets and not any(target.rstrip("/") == t.rstrip("/") for t in allowed_targets):
        raise ReplayError(f"target: {target!r} is not allowed here; allowed: {', '.join(allowed_targets)}")
    params: dict[str, Any] = {"target": target.rstrip("/")}
    model = raw.get("model", DEFAULTS["model"])
    if not isinstance(model, str) or not model:
        raise ReplayError(f"model: must be the served model's name, got {model!r}")
    params["model"] = model
    for key, (lo, hi) in _LIMITS.items():
        value = raw.get(key, DEFAULTS[key])
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ReplayError(f"{key}: must be a number in [{lo:g}, {hi:g}], got {value!r}") from None
        if not lo <= number <= hi:
            raise ReplayError(f"{key}: must be in [{lo:g}, {hi:g}], got {value!r}")
        params[key] = number if key == "timeoutSeconds" else int(number)
    unknown = sorted(set(raw) - {"target", "model", *_LIMITS})
    if unknown:
        raise ReplayError(f"unknown parameter(s) {', '.join(unknown)}; allowed: target, model, {', '.join(_LIMITS)}")
    return params


class ReplayServer:
    """The webhook server; the holdout loads in the background and /healthz reports when it is ready."""

    def __init__(
        self, load_holdout: Callable[[], Holdout], *, host: str, port: int, allowed_targets: Sequence[str] = ()
    ) -> None:
        self.allowed_targets = [t for t in allowed_targets if t]
        self.holdout: Holdout | None = None
        self.load_error = ""
        self._load = load_holdout
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:
                print(f"replay: {self.address_string()} {fmt % args}", file=sys.stderr)

            def _send(self, status: int, body: Mapping[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path != "/healthz":
                    self._send(404, {"error": "GET /healthz; POST /smoke or /replay"})
                elif server.holdout is None:
                    self._send(503, {"error": server.load_error or "holdout is still loading"})
                else:
                    self._send(200, {"ok": True, "transactions": len(server.holdout.transactions)})

            def do_POST(self) -> None:
                status, body = server.handle(self.path, self._body())
                self._send(status, body)

            def _body(self) -> Any:
                length = int(self.headers.get("content-length") or 0)
                if length > 1 << 20:
                    return None
                try:
                    return json.loads(self.rfile.read(length) or b"{}")
                except (json.JSONDecodeError, UnicodeDecodeError):
                    return None

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def load(self) -> None:
        try:
            self.holdout = self._load()
            print(f"replay: holdout loaded ({len(self.holdout.transactions)} transactions)", file=sys.stderr)
        except Exception as exc:  # reported by /healthz; the pod stays unready instead of crash-looping
            self.load_error = f"holdout failed to load: {exc}"
            print(f"replay: {self.load_error}", file=sys.stderr)

    def handle(self, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        if path not in ("/smoke", "/replay"):
            return 404, {"error": f"unknown path {path}; POST /smoke or /replay"}
        if self.holdout is None:
            return 503, {"error": self.load_error or "holdout is still loading"}
        try:
            params = parse_params(body, self.allowed_targets)
        except ReplayError as exc:
            return 400, {"error": str(exc)}
        if path == "/smoke":
            try:
                return 200, smoke(params["target"], self.holdout, model=params["model"])
            except ReplayError as exc:
                return 502, {"ok": False, "error": str(exc)}
        result = replay(
            params["target"],
            self.holdout,
            model=params["model"],
            min_frauds=params["minFrauds"],
            max_transactions=params["maxTransactions"],
            batch_size=params["batchSize"],
            timeout_seconds=params["timeoutSeconds"],
        )
        print(f"replay: {json.dumps(result.to_json())}", file=sys.stderr)
        return (200 if result.ok else 502), result.to_json()

    def serve_forever(self) -> None:
        threading.Thread(target=self.load, daemon=True).start()
        self.httpd.serve_forever()

    def start_background(self) -> threading.Thread:
        self.load()
        thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        thread.start()
        return thread

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ---------------------------------------------------------------------------------------------------
# Command line: ``python -m ops.replay serve|run`` (also ``fraudctl replay ...`` via register()).


def _holdout_loader(kind: str, source: str | None) -> Callable[[], Holdout]:
    if kind == "synthetic":
        return synthetic_holdout
    return lambda: scenario_holdout(source)


def _add_arguments(serve: argparse.ArgumentParser, run: argparse.ArgumentParser) -> None:
    for parser in (serve, run):
        parser.add_argument("--holdout", choices=HOLDOUT_SOURCES, default="scenario", help="transactions to replay")
        parser.add_argument("--source", help="dataset file or URL for --holdout scenario (else $FRAUD_DATA_SOURCE)")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve.set_defaults(handler=run_serve)
    run.add_argument("--target", required=True, help="model server base URL, e.g. http://127.0.0.1:8080")
    run.add_argument("--model", default=DEFAULTS["model"])
    run.add_argument("--min-frauds", type=int, default=DEFAULTS["minFrauds"])
    run.add_argument("--max-transactions", type=int, default=DEFAULTS["maxTransactions"])
    run.add_argument("--batch-size", type=int, default=DEFAULTS["batchSize"])
    run.add_argument("--timeout", type=float, default=DEFAULTS["timeoutSeconds"])
    run.set_defaults(handler=run_once)


def register(commands: Any, bench: Any) -> None:
    replay_parser = commands.add_parser("replay", help="replay labelled holdout traffic against a model server")
    actions = replay_parser.add_subparsers(dest="replay_command", required=True, metavar="ACTION")
    _add_arguments(
        actions.add_parser("serve", help="run the rollout webhook server (/smoke, /replay)"),
        actions.add_parser("run", help="replay once and print the counts as JSON"),
    )


def run_serve(args: argparse.Namespace) -> int:
    allowed = [t.strip() for t in os.environ.get(ALLOWED_TARGETS_ENV, "").split(",") if t.strip()]
    server = ReplayServer(
        _holdout_loader(args.holdout, args.source), host=args.host, port=args.port, allowed_targets=allowed
    )
    print(f"replay: serving on {args.host}:{server.port}, targets {allowed or 'any'}", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.shutdown()
    return 0


def run_once(args: argparse.Namespace) -> int:
    body = {
        "target": args.target,
        "model": args.model,
        "minFrauds": args.min_frauds,
        "maxTransactions": args.max_transactions,
        "batchSize": args.batch_size,
        "timeoutSeconds": args.timeout,
    }
    try:
        params = parse_params(body, [])
    except ReplayError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    holdout = _holdout_loader(args.holdout, args.source)()

    def progress(result: ReplayResult) -> None:
        print(f"replay: {result.transactions} sent, {result.labelled_frauds} frauds labelled", file=sys.stderr)

    result = replay(
        params["target"],
        holdout,
        model=params["model"],
        min_frauds=params["minFrauds"],
        max_transactions=params["maxTransactions"],
        batch_size=params["batchSize"],
        timeout_seconds=params["timeoutSeconds"],
        progress=progress,
    )
    print(json.dumps(result.to_json(), indent=2))
    return 0 if result.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.replay", description=__doc__.splitlines()[0])
    actions = parser.add_subparsers(dest="replay_command", required=True, metavar="ACTION")
    _add_arguments(
        actions.add_parser("serve", help="run the rollout webhook server (/smoke, /replay)"),
        actions.add_parser("run", help="replay once and print the counts as JSON"),
    )
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
