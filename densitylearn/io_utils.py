"""Crash-safe file writing shared by every writer in the package, and pool workers that end with
their parent."""

from __future__ import annotations

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ""):
    """Yield a temporary path beside ``path``; on success fsync it and ``os.replace`` it.

    On an exception the temporary file is removed and ``path`` is left as it was, so a
    killed or failed writer never leaves a truncated file under the final name.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=suffix + ".tmp",
                               dir=folder)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def parse_shard(text: str | None) -> tuple[int, int]:
    """Parse ``"i/n"`` (0 <= i < n) into ``(i, n)``; None gives ``(0, 1)``."""
    from .errors import InputError

    if text is None:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise InputError(f"--shard expects i/n such as 0/4, got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard {text}: need 0 <= i < n")
    return i, n


def exit_with_parent(parent: int, poll_s: float = 0.5) -> None:
    """Make this (worker) process end as soon as process ``parent`` is gone.

    The workers of a process pool outlive a parent that is killed (``kill``, a job
    scheduler's SIGTERM or SIGKILL) and would go on computing for nobody, holding the
    cores a restarted run needs. Used as a pool initializer with the pool owner's pid
    (``initargs=(os.getpid(), ...)``, not ``os.getppid()`` here: the parent may already be
    gone when a spawned worker starts): a daemon thread polls this process's parent pid and
    exits once the worker has been re-parented. Results are written atomically, so an
    interrupted task leaves nothing half-written.
    """
    import threading
    import time

    def watch():
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="densitylearn-exit-with-parent").start()
