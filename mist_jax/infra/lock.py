"""A workdir lock: one run per output folder at a time.

An OS record lock (``fcntl.lockf``) on ``<workdir>/.lock``, held for the whole run and released
by the OS when the process ends, however it ends (no stale lock after kill -9). A second
process on the same workdir is refused at once, with the holder's PID and host; the same
process may take it again (e.g. a resumed ``Run`` object in a notebook).
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path


class WorkdirInUse(RuntimeError):
    """Another process holds the workdir's lock."""


class WorkdirLock:
    """Take the lock of ``workdir`` (created if missing); ``release()`` or process exit frees it.

    Args:
      workdir: the folder to lock.
      wait: block until the holder lets go (e.g. a shared dataset build) instead of refusing.
    Raises:
      WorkdirInUse: another process holds it (the message names it and the fix).
    """

    def __init__(self, workdir: str | Path, wait: bool = False):
        self.path = Path(workdir) / ".lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+")  # noqa: SIM115 (held open for the run)
        try:
            fcntl.lockf(self._file, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            raise WorkdirInUse(
                f"{self.path.parent} is in use by a running mist-jax run ({holder}). Wait for "
                "it to finish (re-running the same command afterwards resumes it) or pass "
                "another --workdir.") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self._file.flush()

    def __enter__(self) -> "WorkdirLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def guard(self, check) -> None:
        """Run ``check()``; if it raises, release the lock and re-raise (a refused run leaves
        the workdir free)."""
        try:
            check()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Free the lock (idempotent)."""
        if self._file is not None and not self._file.closed:
            fcntl.lockf(self._file, fcntl.LOCK_UN)
            self._file.close()
