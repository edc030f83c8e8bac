"""Errors a user can cause, as the one line the command-line entry points print.

Bad input (a config value, a missing data set, a corrupt checkpoint) raises ValueError or
FileNotFoundError whose message already names the problem and the fix; an operating-system
error on the user's folders (a workdir that is a file, a read-only folder, a full disk) arrives
as a bare ``OSError`` and gets its fix here.
"""

from __future__ import annotations

import errno

from mist_jax.infra.lock import WorkdirInUse

#: What ``mist_jax.main`` and ``mist_jax.study`` print as one line (exit 1), not a traceback.
USER_ERRORS = (ValueError, OSError, WorkdirInUse)


def one_line(e: BaseException) -> str:
    """``"<Type>: <message and fix>"`` of a ``USER_ERRORS`` exception, on one line."""
    where = getattr(e, "filename", None)
    code = getattr(e, "errno", None)
    if isinstance(e, OSError) and where is not None:
        if code == errno.ENOSPC:
            fix = (f"no space left on the disk holding {where}: free some space and re-run the "
                   "same command (it resumes from the last complete checkpoint; every file is "
                   "written whole or not at all)")
        elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
            fix = (f"{where} cannot be written ({e.strerror}): pass a --workdir you can write "
                   "to, or fix its permissions")
        elif code in (errno.EEXIST, errno.ENOTDIR):
            fix = (f"{where} (or a folder above it) is a file, not a folder: pass another "
                   "--workdir")
        else:
            fix = str(e)
        return f"{type(e).__name__}: {fix}."
    return f"{type(e).__name__}: {e}"
