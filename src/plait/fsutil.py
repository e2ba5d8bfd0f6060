"""Atomic file writes shared by every part of plait that leaves a file for someone else.

A reader (a test polling a ready file, a proxy loading its last-known-good config, an app
loading ``cert.pem``) must never see half a file. :func:`write_atomic` writes to a
uniquely named temporary file in the same directory, created ``0600`` with ``O_EXCL`` and
given its final ``mode`` with ``fchmod`` before the first byte (so the umask can neither
widen nor narrow it; without a mode it is created as ``open()`` would). It then fsyncs
the file, renames it over the target with ``os.replace`` (atomic on POSIX) and, if asked,
fsyncs the directory so the rename itself survives a crash. The temporary file is
removed if anything fails.

:func:`write_json_atomic` is the same for a small JSON document (the ready files).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["write_atomic", "write_json_atomic"]


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes,
    mode: int | None = None,
    *,
    make_parents: bool = False,
    fsync_dir: bool = False,
) -> None:
    """Replace ``path`` with ``data`` atomically (temp file, fsync, rename).

    ``mode`` is the file's exact mode from before the first byte is written; None means
    what a plain ``open()`` would give (0666 less the umask). ``make_parents`` creates the
    directory first; ``fsync_dir`` fsyncs it after the rename."""
    target = Path(path)
    if make_parents:
        target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, 0o666 if mode is None else 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync_dir:
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_json_atomic(
    path: str | os.PathLike[str],
    payload: Any,
    mode: int | None = None,
    *,
    make_parents: bool = False,
    indent: int | None = None,
    newline: bool = False,
) -> None:
    """:func:`write_atomic` of ``json.dumps(payload, indent=indent)`` (plus ``"\\n"``)."""
    text = json.dumps(payload, indent=indent) + ("\n" if newline else "")
    write_atomic(path, text.encode(), mode, make_parents=make_parents)
