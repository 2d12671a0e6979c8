"""Signed prediction ids and the ground-truth feedback protocol (docs/CONTRACTS.md, "Feedback protocol").

Every scored row gets a ``prediction_id``: a token that carries the model version, the decision and the
issue time, authenticated with HMAC-SHA256 under ``FEEDBACK_SIGNING_KEY`` (a Kubernetes Secret shared by
all replicas; in a cluster mounted as a file named by ``FEEDBACK_SIGNING_KEY_FILE``). Feedback can therefore
be counted by whichever replica receives it, with no shared state: the version and decision come from the
verified token, and a client that never received a prediction
cannot produce a token that verifies. Each replica remembers the tokens it has counted until they expire
(bounded seen-set), so a repeat reaching the same replica is refused with 409 instead of double counted.

Token layout (base64url, no padding) of ``payload || mac``::

    payload = format (1 byte, =1) | flags (1 byte, bit 0 = decision fraud) | issued_at (uint32, unix s)
              | nonce (12 random bytes) | model version (utf-8)
    mac     = HMAC-SHA256(key, b"fraud-prediction-id\\0" + payload)[:16]
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import hmac
import json
import os
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from serving.metrics import outcome

SIGNING_KEY_ENV = "FEEDBACK_SIGNING_KEY"
# Optional second key accepted for verification only, so the Secret can be rotated without losing
# feedback on predictions signed just before the rotation.
PREVIOUS_SIGNING_KEY_ENV = "FEEDBACK_SIGNING_KEY_PREVIOUS"
MIN_KEY_BYTES = 16
# ``<NAME>_FILE``: the key is the content of that file (a mounted Secret), not an environment variable.
FILE_SUFFIX = "_FILE"
MAX_KEY_FILE_BYTES = 4096

DEFAULT_TOKEN_TTL_SECONDS = 24 * 3600
DEFAULT_SEEN_CAPACITY = 200_000
MAX_ITEMS_PER_REQUEST = 1000
# Replicas' clocks differ a little; a token "issued" slightly in the future is still genuine.
MAX_CLOCK_SKEW_SECONDS = 300

_FORMAT = 1
_HEADER = struct.Struct(">BBI12s")
_MAC_BYTES = 16
_MAC_CONTEXT = b"fraud-prediction-id\0"
_MAX_VERSION_BYTES = 64
_MAX_TOKEN_CHARS = 4 * (_HEADER.size + _MAX_VERSION_BYTES + _MAC_BYTES) // 3 + 4

# HTTP status per rejection reason; when several items fail, the first reason in this order decides.
REJECTION_STATUS: dict[str, int] = {
    "malformed": 400,
    "bad_signature": 403,
    "expired": 410,
    "repeat": 409,
    "capacity": 503,
}


class SigningKeyError(ValueError):
    """FEEDBACK_SIGNING_KEY is missing or too short."""


@dataclass(frozen=True)
class PredictionToken:
    """What a verified prediction id says about the prediction it was issued for."""

    model_version: str
    is_fraud: bool
    issued_at: int
    nonce: bytes


@dataclass(frozen=True)
class Rejection:
    index: int
    reason: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "reason": self.reason, "detail": self.detail}


class FeedbackRejected(Exception):
    """The whole feedback request is refused (nothing was counted)."""

    def __init__(self, rejections: Sequence[Rejection], message: str | None = None) -> None:
        self.rejections = list(rejections)
        reasons = [r.reason for r in self.rejections]
        self.reason = min(reasons, key=list(REJECTION_STATUS).index)
        self.status_code = REJECTION_STATUS[self.reason]
        if message is None:
            first = next(r for r in self.rejections if r.reason == self.reason)
            more = len(self.rejections) - 1
            suffix = f" (and {more} more rejected item{'s' if more > 1 else ''})" if more else ""
            message = f"feedback item {first.index}: {first.detail}{suffix}; nothing was counted"
        self.message = message
        super().__init__(message)

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "rejected": [r.as_dict() for r in self.rejections]}


def _key_setting(env: Mapping[str, str], name: str) -> str:
    """``name``'s value, or the content of the file ``<name>_FILE`` names (one trailing newline dropped, as
    ``echo`` or ``kubectl create secret --from-file`` leave it); never both."""
    path = env.get(name + FILE_SUFFIX, "")
    if not path:
        return env.get(name, "")
    if env.get(name):
        raise SigningKeyError(f"{name} and {name}{FILE_SUFFIX} are both set; give the key one way")
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise SigningKeyError(f"{name}{FILE_SUFFIX}: {path} cannot be read ({exc.strerror})") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise SigningKeyError(f"{name}{FILE_SUFFIX}: {path} is more than {MAX_KEY_FILE_BYTES} bytes; not a key")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SigningKeyError(f"{name}{FILE_SUFFIX}: {path} is not UTF-8 text") from None
    return text[:-1] if text.endswith("\n") else text


def _key_bytes(value: str, env_name: str) -> bytes:
    key = value.encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise SigningKeyError(
            f"{env_name}: must be at least {MIN_KEY_BYTES} bytes (e.g. `openssl rand -hex 32`), "
            f"got {len(key)}"
        )
    return key


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class PredictionSigner:
    """Issues and verifies prediction ids with the shared key (plus an optional previous key)."""

    def __init__(self, key: bytes, previous_keys: Sequence[bytes] = ()) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise SigningKeyError(f"signing key must be at least {MIN_KEY_BYTES} bytes, got {len(key)}")
        self._mac = hmac.new(key, _MAC_CONTEXT, hashlib.sha256)
        self._verifiers = [self._mac] + [hmac.new(k, _MAC_CONTEXT, hashlib.sha256) for k in previous_keys]

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> PredictionSigner:
        env = os.environ if env is None else env
        value = _key_setting(env, SIGNING_KEY_ENV)
        if not value:
            raise SigningKeyError(
                f"{SIGNING_KEY_ENV} is not set (nor {SIGNING_KEY_ENV}{FILE_SUFFIX}): every replica needs the same "
                f"secret key (at least {MIN_KEY_BYTES} bytes, e.g. `openssl rand -hex 32`) to sign prediction ids"
            )
        previous = _key_setting(env, PREVIOUS_SIGNING_KEY_ENV)
        return cls(
            _key_bytes(value, SIGNING_KEY_ENV),
            [_key_bytes(previous, PREVIOUS_SIGNING_KEY_ENV)] if previous else [],
        )

    def issue(self, model_version: str, decisions: Sequence[bool], issued_at: int | None = None) -> list[str]:
        """One token per decision, all stamped with the same issue time (seconds)."""
        version = model_version.encode("utf-8")
        if not version or len(version) > _MAX_VERSION_BYTES:
            raise ValueError(f"model version label must be 1..{_MAX_VERSION_BYTES} bytes, got {model_version!r}")
        stamp = int(time.time()) if issued_at is None else int(issued_at)
        nonces = os.urandom(12 * len(decisions))
        pack = _HEADER.pack
        copy = self._mac.copy
        tokens = []
        for row, is_fraud in enumerate(decisions):
            payload = pack(_FORMAT, 1 if is_fraud else 0, stamp, nonces[12 * row : 12 * row + 12]) + version
            mac = copy()
            mac.update(payload)
            tokens.append(_b64encode(payload + mac.digest()[:_MAC_BYTES]))
        return tokens

    def verify(self, token: Any) -> PredictionToken:
        """Return what the token says, or raise ValueError (malformed) / PermissionError (bad signature)."""
        if not isinstance(token, str) or not token:
            raise ValueError(f"prediction_id must be a non-empty string, got {type(token).__name__}")
        if len(token) > _MAX_TOKEN_CHARS:
            raise ValueError(f"prediction_id is too long ({len(token)} chars) to be one this service issued")
        try:
            raw = _b64decode(token)
        except (binascii.Error, ValueError):
            raise ValueError("prediction_id is not a base64url token issued by this service") from None
        if len(raw) < _HEADER.size + 1 + _MAC_BYTES:
            raise ValueError("prediction_id is too short to be one this service issued")
        payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        for verifier in self._verifiers:
            expected = verifier.copy()
            expected.update(payload)
            if hmac.compare_digest(expected.digest()[:_MAC_BYTES], mac):
                break
        else:
            raise PermissionError("prediction_id signature does not verify: not issued by this service")
        fmt, flags, issued_at, nonce = _HEADER.unpack_from(payload)
        if fmt != _FORMAT:
            raise ValueError(f"prediction_id format {fmt} is not supported (expected {_FORMAT})")
        return PredictionToken(
            model_version=payload[_HEADER.size :].decode("utf-8"),
            is_fraud=bool(flags & 1),
            issued_at=issued_at,
            nonce=nonce,
        )


class SeenTokens:
    """Tokens already counted on this replica, kept until they expire; bounded by ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._expiry: dict[bytes, int] = {}
        self._heap: list[tuple[int, bytes]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def __contains__(self, nonce: bytes) -> bool:
        return nonce in self._expiry

    def purge(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, nonce = heapq.heappop(heap)
            self._expiry.pop(nonce, None)

    def free(self) -> int:
        return self.capacity - len(self._expiry)

    def add(self, nonce: bytes, expires_at: int) -> None:
        self._expiry[nonce] = expires_at
        heapq.heappush(self._heap, (expires_at, nonce))


@dataclass(frozen=True)
class FeedbackItem:
    prediction_id: str
    label: int


@dataclass(frozen=True)
class CountedFeedback:
    prediction_id: str
    model_version: str
    outcome: str

    def as_dict(self) -> dict[str, str]:
        return {"prediction_id": self.prediction_id, "model_version": self.model_version, "outcome": self.outcome}


def parse_feedback_body(body: bytes) -> list[FeedbackItem]:
    """``{"prediction_id": str, "label": 0|1}`` or a non-empty list of those; raise FeedbackRejected."""
    try:
        document = json.loads(body)
    except RecursionError:
        raise FeedbackRejected(
            [Rejection(0, "malformed", "body is nested too deeply to be feedback")],
            'malformed JSON body: nested too deeply; send {"prediction_id": "...", "label": 0|1} or a list of those',
        ) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise FeedbackRejected(
            [Rejection(0, "malformed", f"body is not valid JSON ({exc})")],
            'malformed JSON body: send {"prediction_id": "...", "label": 0|1} or a list of those',
        ) from None
    items = document if isinstance(document, list) else [document]
    if not items:
        raise FeedbackRejected([Rejection(0, "malformed", "empty list: send at least one feedback item")])
    if len(items) > MAX_ITEMS_PER_REQUEST:
        raise FeedbackRejected(
            [Rejection(0, "malformed", f"{len(items)} items; at most {MAX_ITEMS_PER_REQUEST} per request")]
        )
    parsed: list[FeedbackItem] = []
    rejections: list[Rejection] = []
    for index, item in enumerate(items):
        problem = _item_problem(item)
        if problem:
            rejections.append(Rejection(index, "malformed", problem))
        else:
            parsed.append(FeedbackItem(item["prediction_id"], item["label"]))
    if rejections:
        raise FeedbackRejected(rejections)
    return parsed


def _item_problem(item: Any) -> str | None:
    if not isinstance(item, dict):
        return f'must be an object {{"prediction_id": ..., "label": 0|1}}, got {type(item).__name__}'
    fields = set(item)
    if fields != {"prediction_id", "label"}:
        missing = sorted({"prediction_id", "label"} - fields)
        extra = sorted(fields - {"prediction_id", "label"})
        parts = [f"missing {', '.join(missing)}"] if missing else []
        parts += [f"unexpected {', '.join(extra)}"] if extra else []
        return f"{'; '.join(parts)} (allowed fields: prediction_id, label)"
    if not isinstance(item["prediction_id"], str) or not item["prediction_id"]:
        return "prediction_id must be the non-empty string returned with the prediction"
    label = item["label"]
    if type(label) is not int or label not in (0, 1):
        return f"label must be 0 (legit) or 1 (fraud), got {label!r}"
    return None


class FeedbackLedger:
    """Verifies and counts feedback for one replica; a request is applied entirely or not at all."""

    def __init__(
        self,
        signer: PredictionSigner,
        *,
        ttl_seconds: float = DEFAULT_TOKEN_TTL_SECONDS,
        capacity: int = DEFAULT_SEEN_CAPACITY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.signer = signer
        self.ttl_seconds = ttl_seconds
        self.seen = SeenTokens(capacity)
        self._clock = clock

    def apply(self, items: Sequence[FeedbackItem]) -> list[CountedFeedback]:
        """Check every item, then record all of them; raise FeedbackRejected if any item fails."""
        now = self._clock()
        self.seen.purge(now)
        accepted: list[tuple[PredictionToken, FeedbackItem]] = []
        rejections: list[Rejection] = []
        in_request: set[bytes] = set()
        for index, item in enumerate(items):
            try:
                token = self.signer.verify(item.prediction_id)
            except PermissionError as exc:
                rejections.append(Rejection(index, "bad_signature", str(exc)))
                continue
            except ValueError as exc:
                rejections.append(Rejection(index, "malformed", str(exc)))
                continue
            age = now - token.issued_at
            if age > self.ttl_seconds:
                rejections.append(
                    Rejection(
                        index,
                        "expired",
                        f"prediction_id was issued {age:.0f} s ago; feedback is accepted for "
                        f"{self.ttl_seconds:.0f} s",
                    )
                )
            elif age < -MAX_CLOCK_SKEW_SECONDS:
                rejections.append(
                    Rejection(index, "malformed", f"prediction_id is stamped {-age:.0f} s in the future")
                )
            elif token.nonce in self.seen or token.nonce in in_request:
                rejections.append(
                    Rejection(index, "repeat", "feedback for this prediction_id was already counted")
                )
            else:
                in_request.add(token.nonce)
                accepted.append((token, item))
        if rejections:
            raise FeedbackRejected(rejections)
        if len(accepted) > self.seen.free():
            raise FeedbackRejected(
                [Rejection(i, "capacity", "seen-set full") for i in range(len(accepted))],
                f"this replica already tracks {len(self.seen)} unexpired feedback tokens (limit "
                f"{self.seen.capacity}); retry later, nothing was counted",
            )
        counted = []
        for token, item in accepted:
            self.seen.add(token.nonce, int(token.issued_at + self.ttl_seconds) + 1)
            cell = outcome(token.is_fraud, item.label)
            counted.append(CountedFeedback(item.prediction_id, token.model_version, cell))
        return counted
