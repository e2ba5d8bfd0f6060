"""Whether the proxy's request path runs compiled or interpreted: decided once, at import.

``make native`` (``scripts/build_native.py``) compiles :data:`MODULES` -- the modules a
request passes through -- with mypyc into ``src/plait/proxy/_compiled/`` and writes
``stamp.json`` there: the interpreter it was built for and one SHA-256 over every
``.py`` file under ``src/plait`` (mypyc type-checks and may inline across all of them).
When :mod:`plait.proxy` is imported, :func:`select` puts that folder first on the
package's ``__path__``, so ``plait.proxy.http1`` and the rest load from the compiled
extension modules, but only when all of these hold:

- ``PLAIT_PURE`` is unset or empty (``PLAIT_PURE=1`` always runs the sources);
- the stamp is there and names this interpreter (``sys.version``, extension suffix);
- every compiled module's extension file is there;
- the sources still hash to the stamp: a source edited since the build (or a checkout
  of another commit) runs interpreted, never as stale compiled code.

The compiled modules are the same source, compiled: behaviour is the same, and the
test suite runs on both (``make test``). :data:`STATE` says which one is running and
why; the proxy logs it at start and the admin ``/server_info`` shows it.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import os
import sys
from pathlib import Path

__all__ = ["COMPILED_DIR", "LIBRARY", "MODULES", "STATE", "select", "source_digest", "why_not"]

# The request path, leaf modules first: config values (runtime), heads and their checks,
# the exchange, connections, balancing, timers, the access log. A compiled class can
# only be derived from in compiled code: DataPlane (dataplane) from Observer (observe),
# MtlsHttp1Server (inbound) from Http1Server (http1). Metrics, Proxy-Status, the router
# and http1_shapes stay interpreted: off the per-request path of repeated traffic
# (observe keeps the metrics series, local replies are rare, kept targets skip routing,
# whole reads skip the head checks), and each compiled module adds to every proxy's
# resident memory.
MODULES = (
    "deadlines",
    "write_behind",
    "runtime",
    "lb",
    "accesslog",
    "http1_checks_common",
    "http1_checks_request",
    "http1_checks_response",
    "http1_checks",
    "http1_whole",
    "http1_route",
    "tls_transport",
    "upstream",
    "http1_attempt",
    "http1_dispatch",
    "http1_exchange",
    "http1",
    "inbound",
    "observe",
    "dataplane",
)
GROUP = "plait.proxy.compiled"  # mypyc's group name
LIBRARY = GROUP.rsplit(".", 1)[1] + "__mypyc"  # its shared library, next to the modules
PACKAGE_DIR = Path(__file__).resolve().parent
COMPILED_DIR = PACKAGE_DIR / "_compiled"
SOURCE_ROOT = PACKAGE_DIR.parent  # src/plait

STATE = "interpreted: not decided yet"


def source_digest(root: Path = SOURCE_ROOT) -> str:
    """SHA-256 over every ``.py`` file under ``root``: relative path and contents, in
    sorted order."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def interpreter() -> dict[str, str]:
    """What a build is only good for. The suffix is the import system's own, rather than
    ``sysconfig``'s ``EXT_SUFFIX`` (the same string): reading that loads the build's
    whole configuration, 0.4 MiB that would stay in every proxy."""
    return {"python": sys.version, "ext_suffix": importlib.machinery.EXTENSION_SUFFIXES[0]}


def why_not(compiled: Path = COMPILED_DIR, root: Path = SOURCE_ROOT) -> str | None:
    """Why the compiled modules in ``compiled``, built from the sources under ``root``,
    cannot be used (None: they can)."""
    if os.environ.get("PLAIT_PURE"):
        return "PLAIT_PURE is set"
    stamp_path = compiled / "stamp.json"
    try:
        stamp = json.loads(stamp_path.read_text())
    except FileNotFoundError:
        return "not built (make native)"
    except (OSError, ValueError) as exc:
        return f"{stamp_path}: unreadable ({exc}); run make native"
    this = interpreter()
    if not isinstance(stamp, dict) or stamp.get("interpreter") != this:
        return f"{stamp_path}: built for another interpreter; run make native"
    suffix = this["ext_suffix"]
    for name in (*MODULES, LIBRARY):
        if not (compiled / f"{name}{suffix}").is_file():
            return f"{compiled / (name + suffix)} is missing; run make native"
    if stamp.get("modules") != list(MODULES):
        return f"{stamp_path}: built for other modules; run make native"
    if stamp.get("sources") != source_digest(root):
        return "the sources changed since the build; run make native"
    return None


def select(package_path: list[str], compiled: Path = COMPILED_DIR, root: Path = SOURCE_ROOT) -> str:
    """Put ``compiled`` first on ``package_path`` (plait.proxy's ``__path__``) if its
    modules can be used (:func:`why_not`); sets and returns :data:`STATE`."""
    global STATE
    why = why_not(compiled, root)
    if why is None:
        if str(compiled) not in package_path:
            package_path.insert(0, str(compiled))
        STATE = f"compiled (mypyc, {len(MODULES)} modules)"
    else:
        STATE = f"interpreted: {why}"
    return STATE
