"""The mock engine ``fraudctl render`` runs the program under (``pulumi.runtime.set_mocks``, preview=False).

``RecordingMocks`` plays the providers: a resource's state is its inputs plus what the real provider would
compute (generated passwords, TLS keys and certificates, a Helm release's status, an image's digest), secret
where the provider marks it secret. ``RecordingMonitor`` keeps what the SDK's mock monitor drops: each
resource's parent, explicit dependencies, provider and raw inputs, and the stack's outputs. Imported only
when a render runs (it loads the Pulumi SDK's runtime).
"""

from __future__ import annotations

import hashlib
from typing import Any

from pulumi.runtime import mocks, rpc
from pulumi.runtime.proto import resource_pb2

from infra.render import (
    HELM_RELEASE,
    MOCK_SECRET_PREFIX,
    SECRET_SIG,
    SECRET_VALUE_SIG,
    TLS_CERT_REQUEST,
    TLS_OUTPUTS,
    TLS_PRIVATE_KEY,
    RecordedResource,
)


def _secret(value: Any) -> dict[str, Any]:
    return {SECRET_SIG: SECRET_VALUE_SIG, "value": value}


def _pem(label: str, body: str) -> str:
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"


class RecordingMocks(mocks.Mocks):
    """Plays the providers: returns inputs as state plus what real providers would compute."""

    def __init__(self) -> None:
        self.generated_secrets: list[str] = []

    def new_resource(self, args: mocks.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        state = dict(args.inputs)
        if args.typ == "random:index/randomPassword:RandomPassword":
            digest = hashlib.sha256(args.name.encode()).hexdigest()
            length = int(args.inputs.get("length", 24))
            value = (MOCK_SECRET_PREFIX + digest)[: max(length, len(MOCK_SECRET_PREFIX) + 8)]
            bcrypt = "$2a$10$" + digest[:53]
            self.generated_secrets += [value, bcrypt]
            # The random provider marks these outputs secret; so must the mock.
            state["result"] = _secret(value)
            state["bcryptHash"] = _secret(bcrypt)
        elif args.typ in TLS_OUTPUTS:
            state.update(self._tls(args.typ, args.name))
        elif args.typ == HELM_RELEASE:
            state["status"] = {
                "name": args.inputs.get("name", args.name),
                "namespace": args.inputs.get("namespace", "default"),
                "chart": args.inputs.get("chart"),
                "version": args.inputs.get("version"),
                "status": "deployed",
                "revision": 1,
            }
        elif args.typ == "docker:index/image:Image":
            name = str(args.inputs.get("imageName", args.name))
            digest = hashlib.sha256(name.encode()).hexdigest()
            state["repoDigest"] = f"{name.rsplit(':', 1)[0]}@sha256:{digest}"
        return f"{args.name}-id", state

    def _tls(self, typ: str, name: str) -> dict[str, Any]:
        """What the tls provider computes: PEM-shaped placeholders, private keys marked secret (as the
        provider's additional secret outputs) and remembered so the leak test can look for them."""
        digest = hashlib.sha256(f"{typ}/{name}".encode()).hexdigest()
        if typ == TLS_PRIVATE_KEY:
            key = MOCK_SECRET_PREFIX + digest
            self.generated_secrets.append(key)
            pem = _pem("PRIVATE KEY", key)
            return {
                "privateKeyPem": _secret(pem),
                "privateKeyPemPkcs8": _secret(pem),
                "privateKeyOpenssh": _secret(_pem("OPENSSH PRIVATE KEY", key)),
                "publicKeyPem": _pem("PUBLIC KEY", f"mock-public-{digest}"),
            }
        if typ == TLS_CERT_REQUEST:
            return {"certRequestPem": _pem("CERTIFICATE REQUEST", f"mock-csr-{digest}")}
        return {
            "certPem": _pem("CERTIFICATE", f"mock-cert-{digest}"),
            "readyForRenewal": False,
            "validityStartTime": "2026-01-01T00:00:00Z",
            "validityEndTime": "2027-01-01T00:00:00Z",
        }

    def call(self, args: mocks.MockCallArgs) -> tuple[dict[str, Any], None]:
        return {}, None


class RecordingMonitor(mocks.MockMonitor):
    """Keeps what the base mock monitor drops: parent, dependencies, raw inputs, stack outputs."""

    def __init__(self, m: RecordingMocks) -> None:
        super().__init__(m)
        self.recorded: list[RecordedResource] = []
        self.stack_outputs: dict[str, Any] = {}

    def RegisterResource(self, request: resource_pb2.RegisterResourceRequest) -> resource_pb2.RegisterResourceResponse:
        # Named rather than super(): mypy's untyped_calls_exclude (pyproject.toml) goes by the callee's name.
        response: resource_pb2.RegisterResourceResponse = mocks.MockMonitor.RegisterResource(self, request)
        if request.type != "pulumi:pulumi:Stack":
            self.recorded.append(
                RecordedResource(
                    urn=response.urn,
                    type=request.type,
                    name=request.name,
                    parent=request.parent,
                    provider=request.provider,
                    dependencies=list(request.dependencies),
                    inputs=rpc.deserialize_properties(request.object),
                    custom=bool(request.custom),
                )
            )
        return response

    def RegisterResourceOutputs(self, request: resource_pb2.RegisterResourceOutputsRequest) -> object:
        if request.urn.split("::")[-2] == "pulumi:pulumi:Stack":
            self.stack_outputs = rpc.deserialize_properties(request.outputs)
        return mocks.MockMonitor.RegisterResourceOutputs(self, request)  # protobuf's Empty
