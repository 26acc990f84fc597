"""File helpers used across the package: hashes, atomic writes, JSON that fails in one line."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shown(text: str | os.PathLike) -> str:
    """``text`` (a path, or a message naming one) as it can be written in a UTF-8 file: a file name
    in another encoding (Latin-1 names on a Windows share) reaches Python with its bytes escaped,
    which no UTF-8 writer takes; they are shown as U+FFFD instead."""
    return os.fsencode(str(text)).decode("utf-8", "replace")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` then rename over ``path``: readers see the old file or the whole new one.

    The temporary file lives beside the target (same file system, so the rename is atomic)
    and gets the umask's permissions, not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    return atomic_write(path, write)


def read_json(path: Path, error: Callable[[str], Exception], what: str, fmt: str | None = None) -> dict:
    """Parse ``path``; a missing file, bad JSON or another ``format`` raise ``error(one line)``."""
    if not path.exists():
        raise error(f"{path.parent}: no {path.name} ({what})")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc.msg})") from None
    if fmt is not None and doc.get("format") != fmt:
        raise error(f"{path}: unknown format {doc.get('format')!r}")
    return doc
