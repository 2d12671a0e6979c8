"""The value types of the stack config, each declared once with its rule and its message.

A type here is an ``Annotated`` pydantic type; sections (infra/config/sections.py) use them for their fields,
so ``serving.cpuLimit`` and ``pipeline.trainCpuLimit`` follow one CPU rule. Messages say what is wrong and
what is allowed, and never echo a credential (a URL carrying one is not quoted back).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal
from urllib.parse import SplitResult, parse_qsl, urlsplit

from pydantic import AfterValidator, BeforeValidator, Field

from fraudctl.settings import StrictSettings, shown, text_problem

# ---------------------------------------------------------------------------------------------------
# Kubernetes quantities (k8s.io/apimachinery/pkg/api/resource/quantity.go: <signedNumber><suffix>)

_QUANTITY = re.compile(
    r"(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?"
)
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
MEBIBYTE = Decimal(2**20)
QUANTITY_EXAMPLES = "a Kubernetes quantity such as 250m, 1, 512Mi"


def quantity_value(text: str) -> Decimal:
    """The amount a Kubernetes quantity stands for (cores, bytes); ValueError if it is not one."""
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise ValueError(text)
    number, suffix = Decimal(match["number"]), match["suffix"] or ""
    if suffix in _BINARY:
        return number * Decimal(1024) ** _BINARY[suffix]
    exponent = _DECIMAL[suffix] if suffix in _DECIMAL else int(suffix[1:])
    try:
        return number.scaleb(exponent)
    except InvalidOperation:
        raise ValueError(text) from None


def _number_as_text(value: Any) -> Any:
    """YAML gives ``cpuLimit: 1`` as a number; a quantity is its text (integral floats from Pulumi too)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        return str(int(value)) if value.is_integer() else repr(value)
    return value


def _quantity(kind: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        try:
            amount = quantity_value(text)
        except ValueError:
            raise ValueError(f"{shown(text)} is not valid ({QUANTITY_EXAMPLES})") from None
        if amount <= 0:
            raise ValueError(f"{shown(text)} must be more than 0 ({QUANTITY_EXAMPLES})")
        if kind == "cpu" and (amount < Decimal("0.001") or amount != amount.quantize(Decimal("0.001"))):
            raise ValueError(f"{shown(text)} is finer than a millicore; CPU is counted in whole millicores (e.g. 250m)")
        if kind in ("memory", "storage"):
            if amount != amount.to_integral_value():
                hint = " ('m' means milli; did you mean Mi?)" if text.endswith("m") else ""
                raise ValueError(f"{shown(text)} is not a whole number of bytes{hint}")
            if amount < MEBIBYTE:
                raise ValueError(f"{shown(text)} is less than 1Mi; {kind} is given in bytes (e.g. 512Mi, 4Gi)")
        return text

    return check


CpuQuantity = Annotated[str, BeforeValidator(_number_as_text), AfterValidator(_quantity("cpu"))]
MemoryQuantity = Annotated[str, BeforeValidator(_number_as_text), AfterValidator(_quantity("memory"))]
StorageQuantity = Annotated[str, BeforeValidator(_number_as_text), AfterValidator(_quantity("storage"))]

# ---------------------------------------------------------------------------------------------------
# Names, versions, images


def _form(pattern: str, what: str) -> AfterValidator:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        # fullmatch: "$" would also match before a trailing newline (control characters are refused anyway).
        if not compiled.fullmatch(value):
            raise ValueError(f"{shown(value)} is not valid ({what})")
        return value

    return AfterValidator(check)


def _no_float(value: Any) -> Any:
    if isinstance(value, float):
        raise ValueError(f"must be a string; YAML read {shown(value)} as a number, so quote it")
    return _number_as_text(value)


Text = Annotated[str, Field(min_length=1)]
DnsLabel = Annotated[str, _form(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", "a DNS label: a-z, 0-9, '-'")]
HostName = Annotated[
    str, _form(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?(:\d{1,5})?", "a host name, optionally with :port")
]
BucketName = Annotated[str, _form(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", "an S3 bucket name: 3-63 of a-z, 0-9, '.', '-'")]
ObjectKey = Annotated[str, _form(r"[A-Za-z0-9!_.*'()/-]{1,1024}", "an S3 object key such as creditcard.csv")]
VersionLabel = Annotated[str, BeforeValidator(_no_float), _form(r"[a-z0-9][a-z0-9.-]{0,62}", "a label like v1")]
ModelName = Annotated[str, _form(r"[A-Za-z0-9_.-]{1,64}", "1-64 of letters, digits, '_', '.', '-'")]
ImageTag = Annotated[
    str,
    BeforeValidator(_no_float),
    _form(r"(?!latest$)[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", "a pinned tag, not 'latest'"),
]
GitRevision = Annotated[
    str, _form(r"(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._/-]{0,199}", "a branch, tag or commit, e.g. main")
]
# models:/name@alias, models:/name/N, runs:/..., s3://... or an absolute path (what the MLServer runtime loads,
# model/artifact.py); serving's own CLI also takes relative directories, which a cluster cannot.
MODEL_URI_FORMS = "models:/name@alias, models:/name/N, runs:/, s3:// or an absolute path"


def _model_uri(value: str) -> str:
    if not re.fullmatch(r"models:/[A-Za-z0-9_.-]+(@[A-Za-z0-9_-]+|/\d+)|runs:/\S+|s3://\S+|/\S+", value):
        raise ValueError(f"{shown(value)} is not valid ({MODEL_URI_FORMS})")
    if value.startswith("s3://"):
        _no_credentials(value, urlsplit(value), "give the model store's credentials to the pods as a Secret")
    return value


ModelUri = Annotated[str, AfterValidator(_model_uri)]
_EXACT_VERSION = re.compile(r"v?\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?")


def _exact_version(value: str) -> str:
    if not _EXACT_VERSION.fullmatch(value):
        raise ValueError(f"must be an exact version like 1.2.3 (no ranges, no 'latest'), got {shown(value)}")
    return value


def _pinned_image(value: str) -> str:
    if ":" not in value.rsplit("/", 1)[-1] and "@sha256:" not in value:
        raise ValueError(f"must be an image with a pinned tag or digest, got {shown(value)}")
    if value.endswith(":latest"):
        raise ValueError(f"must not use the 'latest' tag, got {shown(value)}")
    if not re.fullmatch(r"[a-z0-9][a-z0-9._/:-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?", value):
        raise ValueError(f"{shown(value)} is not a valid image reference (registry/name:tag or @sha256:digest)")
    return value


def _image_by_digest(value: str) -> str:
    if value == "":
        return value
    if "@sha256:" not in value:
        raise ValueError(
            f'must be an image pinned by digest (registry/name@sha256:<64 hex>) or "", got {shown(value)}'
        )
    return _pinned_image(value)


def _ip_address(value: str) -> str:
    if value == "":
        return value
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(
            f'must be an IP address such as 10.96.0.30, or "" to leave it to the cluster, got {shown(value)}'
        ) from None
    return value


ExactVersion = Annotated[str, BeforeValidator(_no_float), AfterValidator(_exact_version)]
PinnedImage = Annotated[str, AfterValidator(_pinned_image)]
ImageByDigest = Annotated[str, AfterValidator(_image_by_digest)]
IpAddress = Annotated[str, AfterValidator(_ip_address)]

# ---------------------------------------------------------------------------------------------------
# URLs: never with credentials (they would sit in plain text in state, manifests and outputs)

_CREDENTIAL_PARAMETER = re.compile(r"token|passw|secret|key|signature|credential|auth", re.I)


def _no_credentials(value: str, parts: SplitResult, where: str) -> None:
    user, password = parts.username, parts.password
    ssh_user_only = parts.scheme == "ssh" and password is None
    if (user is not None or password is not None) and not ssh_user_only:
        raise ValueError(
            "carries credentials in the URL (user:password@ or token@); they would be stored and shown in plain "
            f"text (state, rendered manifests, stack outputs). Give the URL without them and {where}"
        )
    named = sorted(
        {name for name, _ in parse_qsl(parts.query, keep_blank_values=True) if _CREDENTIAL_PARAMETER.search(name)}
    )
    if named:
        raise ValueError(
            f"carries a credential in its query ({', '.join(named)}); they would be stored and shown in plain text. "
            f"Give the URL without it and {where}"
        )


PULUMI_SECRET_CREDENTIALS = "give credentials through a Pulumi secret"


def url_check(*schemes: str, what: str, where: str = PULUMI_SECRET_CREDENTIALS) -> Callable[[str], str]:
    """The rule of :func:`url` as a plain function (for a field whose value may also be something else)."""

    def check(value: str) -> str:
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ValueError(f"is not a valid URL ({what})") from None
        if parts.scheme not in schemes or not parts.hostname or " " in value:
            allowed = " or ".join(f"{s}://" for s in schemes)
            raise ValueError(f"must be an {allowed} URL ({what}), got {shown(value)}")
        _no_credentials(value, parts, where)
        return value

    return check


def url(*schemes: str, what: str, where: str = PULUMI_SECRET_CREDENTIALS) -> AfterValidator:
    """A URL with one of ``schemes``, a host, and no credentials; ``where``: where credentials go instead."""
    return AfterValidator(url_check(*schemes, what=what, where=where))


_SCP_LIKE = re.compile(r"(?P<user>[A-Za-z0-9._-]+)@(?P<host>[A-Za-z0-9.-]+):(?P<path>[^\s:]\S*)")
GIT_CREDENTIALS = "put the token in the secret gitToken (pulumi config set --secret gitToken)"


def _git_url(value: str) -> str:
    if _SCP_LIKE.fullmatch(value):
        return value  # git@host:owner/name.git: the user names the SSH account, it is no credential
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("https", "ssh") or not parts.hostname or " " in value:
        shown_url = shown(value)
        raise ValueError(f"must be the repository's https:// (or ssh://, git@) clone URL, got {shown_url}")
    _no_credentials(value, parts, GIT_CREDENTIALS)
    return value


GitUrl = Annotated[str, AfterValidator(_git_url)]


# ---------------------------------------------------------------------------------------------------
# Secrets: only ever {secure: <ciphertext>} in a stack file (pulumi config set --secret)


class SecretRef(StrictSettings):
    """A secret config value: set, encrypted; the program reads it only with ``require_secret``."""

    secure: str = Field(min_length=1)

    def __repr__(self) -> str:
        return "SecretRef(<secure>)"


# What load_from_pulumi hands the model for a secret that is set (its value is never read there).
SET_IN_PULUMI = "<set as a Pulumi secret>"


def _a(value: Any) -> str:
    """What kind of value this is, in words (the value itself may be a secret: never quoted)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    return "a list" if isinstance(value, list) else "an object" if isinstance(value, Mapping) else "nothing"


def secret(key: str) -> BeforeValidator:
    """The rule of the secret config key ``key``, for ``Annotated[SecretRef | None, secret(key)]``: unset ("" or
    absent), or ``{secure: <ciphertext>}``."""
    how = f"set it with `pulumi config set --secret {key} <value>` (Pulumi stores {{secure: <ciphertext>}})"

    def check(value: Any) -> SecretRef | None:
        if value is None or value == "":
            return None
        if isinstance(value, str):
            # The value is never quoted back: it is the secret.
            raise ValueError(f"is set in plain text; it is a secret: {how}")
        if not isinstance(value, Mapping) or set(value) != {"secure"}:
            raise ValueError(f"must be a secret, got {_a(value)}: {how}")
        ciphertext = value["secure"]
        if not isinstance(ciphertext, str) or not ciphertext:
            raise ValueError(
                f"has a secure: value that is not the ciphertext string Pulumi writes (got {_a(ciphertext)}); {how}"
            )
        if problem := text_problem(ciphertext):
            raise ValueError(f"secure: {problem}")
        return SecretRef(secure=ciphertext)

    return BeforeValidator(check)


# ---------------------------------------------------------------------------------------------------
# Fault injection (serving.simulateError)

# A string, never a YAML boolean: StrictSettings refuses `simulateError: true` (and YAML 1.2 keeps `on` a string,
# which this refuses too), so an unquoted value cannot switch the drill on by accident.
SimulatedFault = Literal["false", "true", "degrade"]

__all__ = [
    "GIT_CREDENTIALS",
    "MODEL_URI_FORMS",
    "SET_IN_PULUMI",
    "BucketName",
    "CpuQuantity",
    "DnsLabel",
    "ExactVersion",
    "GitRevision",
    "GitUrl",
    "HostName",
    "ImageByDigest",
    "ImageTag",
    "IpAddress",
    "MemoryQuantity",
    "ModelName",
    "ModelUri",
    "ObjectKey",
    "PinnedImage",
    "SecretRef",
    "SimulatedFault",
    "StorageQuantity",
    "Text",
    "VersionLabel",
    "quantity_value",
    "secret",
    "url",
    "url_check",
]
