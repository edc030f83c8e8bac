"""Atomic file writes: a temp file in the target's folder, renamed over the target when complete.

A reader (or a resumed run after a crash) sees either the old file or the whole new one, never a
half-written one (``os.replace`` is atomic on POSIX within one file system).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp", mode: int = 0o644
                ) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success fsync it, chmod it to ``mode`` and rename
    it over ``path``; on an exception delete it and re-raise (``path`` is left as it was).

    Raises: OSError if the folder cannot be created or written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:  # on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write ``text`` to ``path`` (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
