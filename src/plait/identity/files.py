"""Atomic, private file writes for keys, certificates and bundles.

A reader (an app loading ``cert.pem``, the proxy at start) must never see half a file:
every write goes to a temporary file in the same directory, is flushed and fsynced, gets
its final mode, then replaces the target with ``os.replace`` (atomic on POSIX). Private
keys are created ``0600`` from the first byte (``os.open`` with the mode, not a chmod
afterwards), in a directory made ``0700`` when this module creates it.

One service's set, as ``plait identity --out DIR`` and the proxy's data directory lay it
out: ``key.pem`` (0600), ``cert.pem`` (leaf + intermediates) and ``bundle.pem`` (roots),
the last two 0644. The key is written once and kept across renewals; the bundle is
written before the certificate, so a reader never pairs a certificate with a key it does
not match or with roots that do not include its issuer.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

KEY_FILE = "key.pem"
CERT_FILE = "cert.pem"
BUNDLE_FILE = "bundle.pem"


def ensure_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) if missing; a directory this creates is 0700."""
    target = Path(path)
    if not target.is_dir():
        target.mkdir(parents=True, mode=0o700, exist_ok=True)
    return target


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically; the file has ``mode`` from creation."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, flags | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed it; never widens a key
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
