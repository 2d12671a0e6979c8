"""The fraud ensemble compiled for serving: one ONNX Runtime graph in float64, checked against scikit-learn.

scikit-learn scores a row through each HistGradientBoosting member's Python path (about 1.2 ms per member
and call on the 2-core machine). Compiled, the whole ensemble is one ``ai.onnx.ml`` ``TreeEnsemble`` node
(opset 5) with one target per member, evaluated in native code. ``fraudctl bench serving`` measures the
candidates side by side (``compiled_backends``): ONNX Runtime, treelite's GTIL and scikit-learn.
ONNX Runtime was the fastest while exact (differences ~1e-16); skl2onnx's converter was not used because
it emits a float32 ``TreeEnsembleClassifier``, whose rounded thresholds move probabilities (4e-7 on the
registered champion, 5e-3 on a 300-round model of generated data) by amounts the 1e-6 bar cannot promise,
so the graph is built here from the fitted trees, with float64 thresholds and leaf values.

What is compiled is exactly :meth:`model.ensemble.UndersampledBoosting.predict_proba`: per member
``p = expit(baseline + sum of its trees' leaves)``, corrected for the undersampling and averaged. The
pipeline steps before the classifier (``TransactionFeatures``) are plain numpy and run as they are.

The compiled graph travels inside the MLflow model (``extra_files/``) and the model's metadata records
what was checked at registration (``fraud_compiled``). Serving checks it again at load and falls back to
scikit-learn, with the reason logged, when it is missing, unreadable or disagrees.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

ONNX_FILENAME = "fraud-ensemble.onnx"
METADATA_KEY = "fraud_compiled"
FORMAT = "onnx-tree-ensemble-float64/1"
# Agreement required between compiled and scikit-learn scores (registration and load-time check).
MAX_ABS_DIFF = 1e-6
_ONNX_IR_VERSION = 10  # onnxruntime 1.31 reads IR <= 13; 10 is the IR of opset 21
_ONNX_OPSET = 21
_ML_OPSET = 5  # TreeEnsemble (float64 splits and leaves) exists from ai.onnx.ml opset 5
_BRANCH_LEQ = 0


def import_onnxruntime() -> Any:
    """onnxruntime, imported without its telemetry session file (it writes ``$TMPDIR/.ses`` on import)."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime

    return onnxruntime


class CompileError(ValueError):
    """The estimator cannot be compiled (the reason says why); serving uses scikit-learn for it."""


@dataclass(frozen=True)
class EnsembleParts:
    """A fitted fraud estimator taken apart: numpy steps, boosting members and their correction rates."""

    transforms: tuple[Any, ...]  # fitted steps before the classifier: callables on a float64 matrix
    members: tuple[Any, ...]  # fitted binary HistGradientBoostingClassifier
    legit_rates: tuple[float, ...]  # UndersampledBoosting's beta per member (1.0 = no correction)

    @property
    def baselines(self) -> np.ndarray:
        return np.asarray([float(np.ravel(m._baseline_prediction)[0]) for m in self.members], dtype=np.float64)

    def features(self, matrix: np.ndarray) -> np.ndarray:
        values = matrix
        for transform in self.transforms:
            values = transform(values)
        return np.ascontiguousarray(values, dtype=np.float64)


def ensemble_parts(estimator: Any) -> EnsembleParts:
    """Take a Pipeline ending in UndersampledBoosting (or a binary HistGradientBoostingClassifier) apart."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline

    from model.ensemble import UndersampledBoosting
    from model.features import TransactionFeatures, engineer

    steps = [step for _, step in estimator.steps] if isinstance(estimator, Pipeline) else [estimator]
    *before, classifier = steps
    transforms = []
    for step in before:
        if step == "passthrough" or step is None or not hasattr(step, "transform"):
            raise CompileError(f"pipeline step {step!r} has no transform")
        # The project's own feature step is plain numpy: skip scikit-learn's output wrappers (tens of us a call).
        transforms.append(engineer if type(step) is TransactionFeatures else step.transform)
    if isinstance(classifier, UndersampledBoosting):
        members, rates = tuple(classifier.estimators_), tuple(float(r) for r in classifier.legit_rates_)
    elif isinstance(classifier, HistGradientBoostingClassifier):
        members, rates = (classifier,), (1.0,)
    else:
        raise CompileError(f"classifier {type(classifier).__name__} is not a boosted-tree ensemble this compiles")
    for index, member in enumerate(members):
        if not isinstance(member, HistGradientBoostingClassifier):
            raise CompileError(f"member {index} is a {type(member).__name__}, not a HistGradientBoostingClassifier")
        if member.n_trees_per_iteration_ != 1 or type(member._loss).__name__ != "HalfBinomialLoss":
            raise CompileError(f"member {index} is not a binary classifier with the logistic loss")
        if member.is_categorical_ is not None and bool(np.any(member.is_categorical_)):
            raise CompileError(f"member {index} has categorical splits, which are not compiled")
    return EnsembleParts(tuple(transforms), members, rates)


def _tree_tables(parts: EnsembleParts) -> dict[str, Any]:
    """Interior nodes and leaves of every tree, in the TreeEnsemble layout (one target per member)."""
    table: dict[str, list[Any]] = {
        key: []
        for key in (
            "tree_roots", "nodes_featureids", "nodes_splits", "nodes_truenodeids", "nodes_trueleafs",
            "nodes_falsenodeids", "nodes_falseleafs", "nodes_missing_value_tracks_true", "leaf_targetids",
            "leaf_weights",
        )
    }
    for target, member in enumerate(parts.members):
        for (predictor,) in member._predictors:
            nodes = predictor.nodes
            interior: dict[int, int] = {}
            leaves: dict[int, int] = {}
            for key, node in enumerate(nodes):
                if node["is_leaf"]:
                    leaves[key] = len(table["leaf_weights"])
                    table["leaf_weights"].append(float(node["value"]))
                    table["leaf_targetids"].append(target)
            if len(nodes) == 1:
                # A tree that is one leaf: TreeEnsemble roots must be nodes, so a test whose branches
                # both reach that leaf stands in.
                table["tree_roots"].append(len(table["nodes_featureids"]))
                table["nodes_featureids"].append(0)
                table["nodes_splits"].append(0.0)
                table["nodes_missing_value_tracks_true"].append(1)
                for side in ("true", "false"):
                    table[f"nodes_{side}nodeids"].append(leaves[0])
                    table[f"nodes_{side}leafs"].append(1)
                continue
            for key, node in enumerate(nodes):
                if not node["is_leaf"]:
                    interior[key] = len(table["nodes_featureids"]) + len(interior)
            start = len(table["nodes_featureids"])
            for key, node in enumerate(nodes):
                if node["is_leaf"]:
                    continue
                assert interior[key] == len(table["nodes_featureids"]), "interior nodes are laid out in order"
                if node["is_categorical"]:
                    raise CompileError("categorical split found")
                table["nodes_featureids"].append(int(node["feature_idx"]))
                table["nodes_splits"].append(float(node["num_threshold"]))
                # scikit-learn: NaN follows missing_go_to_left, otherwise x <= threshold goes left.
                table["nodes_missing_value_tracks_true"].append(int(bool(node["missing_go_to_left"])))
                for side, child in (("true", int(node["left"])), ("false", int(node["right"]))):
                    is_leaf = child in leaves
                    table[f"nodes_{side}nodeids"].append(leaves[child] if is_leaf else interior[child])
                    table[f"nodes_{side}leafs"].append(int(is_leaf))
            table["tree_roots"].append(start)
    return table


def build_onnx(parts: EnsembleParts) -> bytes:
    """The members' raw scores (before baseline and sigmoid) as one float64 TreeEnsemble graph."""
    from onnx import TensorProto, checker, helper, numpy_helper

    table = _tree_tables(parts)
    n_features = int(parts.members[0].n_features_in_)
    n_targets = len(parts.members)
    node = helper.make_node(
        "TreeEnsemble",
        ["X"],
        ["Y"],
        domain="ai.onnx.ml",
        aggregate_function=1,  # SUM
        post_transform=0,  # NONE: baseline, sigmoid and correction are applied in numpy like scikit-learn
        n_targets=n_targets,
        tree_roots=table["tree_roots"],
        nodes_featureids=table["nodes_featureids"],
        nodes_splits=numpy_helper.from_array(np.asarray(table["nodes_splits"], dtype=np.float64)),
        nodes_modes=numpy_helper.from_array(np.full(len(table["nodes_featureids"]), _BRANCH_LEQ, dtype=np.uint8)),
        nodes_truenodeids=table["nodes_truenodeids"],
        nodes_trueleafs=table["nodes_trueleafs"],
        nodes_falsenodeids=table["nodes_falsenodeids"],
        nodes_falseleafs=table["nodes_falseleafs"],
        nodes_missing_value_tracks_true=table["nodes_missing_value_tracks_true"],
        leaf_targetids=table["leaf_targetids"],
        leaf_weights=numpy_helper.from_array(np.asarray(table["leaf_weights"], dtype=np.float64)),
    )
    graph = helper.make_graph(
        [node],
        "fraud_ensemble",
        [helper.make_tensor_value_info("X", TensorProto.DOUBLE, [None, n_features])],
        [helper.make_tensor_value_info("Y", TensorProto.DOUBLE, [None, n_targets])],
    )
    onnx_model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", _ONNX_OPSET), helper.make_opsetid("ai.onnx.ml", _ML_OPSET)],
        ir_version=_ONNX_IR_VERSION,
        producer_name="fraud-platform model.compiled",
    )
    checker.check_model(onnx_model)
    return onnx_model.SerializeToString()


class CompiledScorer:
    """P(fraud) from the compiled graph, for a float64 matrix in the model's feature order."""

    backend = "onnxruntime"

    def __init__(self, parts: EnsembleParts, onnx_bytes: bytes) -> None:
        onnxruntime = import_onnxruntime()
        options = onnxruntime.SessionOptions()
        # Serving calls this from its event loop, one request at a time: no thread pools to contend with.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        self._session = onnxruntime.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        self._parts = parts
        self._baselines = parts.baselines
        self._rates = np.asarray(parts.legit_rates, dtype=np.float64)

    def probabilities(self, matrix: np.ndarray) -> np.ndarray:
        from scipy.special import expit

        raw = self._session.run(None, {"X": self._parts.features(matrix)})[0] + self._baselines
        sampled = expit(raw)
        corrected = self._rates * sampled / (self._rates * sampled - sampled + 1.0)
        return corrected.mean(axis=1)


def reference_probabilities(estimator: Any, matrix: np.ndarray) -> np.ndarray:
    """scikit-learn's scores for the same matrix (columns in the model's feature order)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
        return np.asarray(estimator.predict_proba(matrix)[:, 1], dtype=np.float64)


@dataclass(frozen=True)
class Agreement:
    rows: int
    max_abs_diff: float
    decisions_differ: int

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= MAX_ABS_DIFF and self.decisions_differ == 0

    def describe(self) -> str:
        return (
            f"{self.rows} rows, max |compiled - scikit-learn| {self.max_abs_diff:.2e} (allowed {MAX_ABS_DIFF:g}), "
            f"{self.decisions_differ} decision(s) differ"
        )


def agreement(scorer: CompiledScorer, estimator: Any, matrix: np.ndarray, threshold: float) -> Agreement:
    compiled = scorer.probabilities(matrix)
    reference = reference_probabilities(estimator, matrix)
    return Agreement(
        rows=len(matrix),
        max_abs_diff=float(np.max(np.abs(compiled - reference))) if len(matrix) else 0.0,
        decisions_differ=int(np.sum((compiled >= threshold) != (reference >= threshold))),
    )


def probe_rows(feature_names: list[str] | tuple[str, ...], rows: int = 256, seed: int = 20230101) -> np.ndarray:
    """Deterministic rows around and beyond the data's range (Time-like first, Amount-like last column)."""
    rng = np.random.default_rng(seed)
    matrix = rng.normal(0.0, 3.0, size=(rows, len(feature_names)))
    matrix[:, 0] = np.abs(matrix[:, 0]) * 50_000
    matrix[:, -1] = np.abs(matrix[:, -1]) * 100
    matrix[: rows // 8] *= 10.0  # far outside the training range: the outermost branches
    return matrix


@dataclass(frozen=True)
class CompiledArtifact:
    onnx_bytes: bytes
    metadata: dict[str, Any]


def compile_estimator(estimator: Any, check_rows: np.ndarray, threshold: float) -> CompiledArtifact:
    """Compile and check against scikit-learn on ``check_rows``; raise CompileError when they disagree."""
    parts = ensemble_parts(estimator)
    onnx_bytes = build_onnx(parts)
    scorer = CompiledScorer(parts, onnx_bytes)
    matrix = np.asarray(check_rows, dtype=np.float64)
    checked = agreement(scorer, estimator, matrix, threshold)
    if not checked.ok:
        raise CompileError(f"compiled scores disagree with scikit-learn: {checked.describe()}")
    onnxruntime = import_onnxruntime()

    return CompiledArtifact(
        onnx_bytes=onnx_bytes,
        metadata={
            "format": FORMAT,
            "file": f"extra_files/{ONNX_FILENAME}",
            "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
            "runtime": f"onnxruntime=={onnxruntime.__version__}",
            "members": len(parts.members),
            "checked_rows": checked.rows,
            "max_abs_diff": checked.max_abs_diff,
        },
    )


def load_compiled(
    info: Any, onnx_bytes: bytes | None, estimator: Any, feature_names: Any, threshold: float
) -> CompiledScorer:
    """The checked CompiledScorer of a loaded model, or raise CompileError saying why there is none."""
    if not info:
        raise CompileError("the artifact has no compiled ensemble (logged before compiled scoring, or not compilable)")
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        found = info.get("format") if isinstance(info, dict) else info
        raise CompileError(f"compiled format {found!r} is not {FORMAT}")
    if onnx_bytes is None:
        raise CompileError(f"{info.get('file')} is missing from the artifact")
    if hashlib.sha256(onnx_bytes).hexdigest() != info.get("sha256"):
        raise CompileError(f"{info.get('file')}: sha256 does not match the model's metadata")
    parts = ensemble_parts(estimator)
    try:
        scorer = CompiledScorer(parts, onnx_bytes)
    except ImportError as exc:
        raise CompileError(f"onnxruntime is not installed ({exc})") from None
    except Exception as exc:  # onnxruntime raises its own types for graphs it cannot run
        raise CompileError(f"onnxruntime cannot run {info.get('file')} ({type(exc).__name__}: {exc})") from None
    checked = agreement(scorer, estimator, probe_rows(feature_names), threshold)
    if not checked.ok:
        raise CompileError(f"load-time check against scikit-learn failed: {checked.describe()}")
    return scorer
