"""Talk to a fraud server with tritonclient (a third-party Open Inference Protocol client), print JSON.

Run as a separate process by test_serving_server.py: tritonclient's gRPC protos and MLServer's define the
same protobuf symbols (``inference.*``), and one Python process's descriptor pool cannot hold both.

    python tests/triton_client.py <http host:port> <grpc host:port> <rows as JSON {column: values}>
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np

MODEL = "fraud-detector"


def _inputs(module: Any, columns: dict[str, list[float]], binary: bool) -> list[Any]:
    tensors = []
    for name, values in columns.items():
        tensor = module.InferInput(name, [len(values)], "FP64")
        array = np.asarray(values, dtype=np.float64)
        if module.__name__.endswith("http"):
            tensor.set_data_from_numpy(array, binary_data=binary)
        else:
            tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def exercise(module: Any, url: str, columns: dict[str, list[float]], binary_modes: tuple[bool, ...]) -> dict:
    from tritonclient.utils import InferenceServerException

    client = module.InferenceServerClient(url=url)
    try:
        report: dict[str, Any] = {"ready": client.is_model_ready(MODEL), "answers": []}
        metadata = client.get_model_metadata(MODEL)
        report["versions"] = list(metadata["versions"] if isinstance(metadata, dict) else metadata.versions)
        for binary in binary_modes:
            result = client.infer(MODEL, _inputs(module, columns, binary), model_version="v1")
            ids = result.as_numpy("prediction_id")
            report["answers"].append(
                {
                    "binary": binary,
                    "fraud_probability": result.as_numpy("fraud_probability").tolist(),
                    "is_fraud": result.as_numpy("is_fraud").tolist(),
                    "prediction_ids": [v.decode() if isinstance(v, bytes) else str(v) for v in ids.tolist()],
                }
            )
        try:
            client.infer(MODEL, _inputs(module, columns, True)[1:])
            report["refused"] = None
        except InferenceServerException as exc:
            report["refused"] = {"status": str(exc.status()), "message": exc.message()}
        return report
    finally:
        client.close()


def main() -> None:
    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton_http

    http_url, grpc_url, rows = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    print(
        json.dumps(
            {
                "http": exercise(triton_http, http_url, rows, (True, False)),
                "grpc": exercise(triton_grpc, grpc_url, rows, (True,)),
            }
        )
    )


if __name__ == "__main__":
    main()
