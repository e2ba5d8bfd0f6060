"""Atomic, private file writes for keys, certificates and bundles.

A reader (an app loading ``cert.pem``, the proxy at start) must never see half a file:
every write goes through :func:`plait.fsutil.write_atomic` (a temporary file in the same
directory, flushed and fsynced, with its final mode, then ``os.replace``). Private
keys are created ``0600`` from the first byte (``os.open`` with the mode, not a chmod
afterwards), in a directory made ``0700`` when this module creates it.

One service's set, as ``plait identity --out DIR`` and the proxy's data directory lay it
out: ``key.pem`` (0600), ``cert.pem`` (leaf + intermediates) and ``bundle.pem`` (roots),
the last two 0644. The key is written once and kept across renewals; the bundle is
written before the certificate, so a reader never pairs a certificate with a key it does
not match or with roots that do not include its issuer.
"""

from __future__ import annotations

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
