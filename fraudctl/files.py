"""Write files so that readers see the old content or the new one, never half of either.

A leaf module (stdlib only) every package may import: one way to replace a file atomically (a temporary
file beside it, then ``os.replace``), whatever writes it.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for the caller to create (a file, or a symlink); on success it
    replaces ``path`` in one rename, on error it is removed. The parent folder is created if needed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A unique name, not created here: the writer creates it with the usual permissions (mkstemp's are 0600).
    temp = target.parent / f".{target.name}.{uuid.uuid4().hex}.part"
    try:
        yield temp
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes, *, durable: bool = True) -> Path:
    """Replace ``path`` with ``data``. ``durable``: flushed to disk before the rename, so even a crash of the
    machine leaves the old content or the new; a cache that may be lost passes False (no fsync)."""
    with atomic_path(path) as temp, open(temp, "wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


def write_text(path: str | Path, text: str, *, durable: bool = True) -> Path:
    return write_bytes(path, text.encode("utf-8"), durable=durable)


def write_json(path: str | Path, payload: Any, *, sort_keys: bool = True) -> Path:
    """``payload`` as indented JSON with a final newline; ``sort_keys=False`` keeps the mapping's order."""
    return write_text(path, json.dumps(payload, indent=2, sort_keys=sort_keys) + "\n")
