"""Reading the bootstrap file in a short-lived child process (the proxy never loads PyYAML).

The bootstrap is YAML, read once at start-up; PyYAML, its C loader and plait's YAML
dialect (:mod:`plait.model.source`, which keeps every value's line for the error
messages) would stay resident for the life of the proxy: about 1.4 MB
(docs/internals.md, "Memory"). Like :mod:`plait.identity.keygen`, :func:`read_bootstrap`
therefore runs ``python -P -m plait.proxy.bootstrap_reader <file>`` (the same
interpreter, ``sys.executable``), which

1. reads and validates the file with :func:`plait.proxy.bootstrap.load_bootstrap`, in
   full, with file, field and line in every error;
2. writes one JSON answer to its stdout: ``{"bootstrap": <Bootstrap.to_data()>}``, or
   ``{"errors": [<FieldError.to_dict()>, ...]}`` with exit status 2; and exits.

The parent rebuilds the :class:`~plait.proxy.bootstrap.Bootstrap` from the checked
values (``Bootstrap(**data)``: the same checks again, on plain JSON values, so the result
equals what the child read), or raises :class:`~plait.proxy.bootstrap.BootstrapError`
with the child's errors, as they would have been raised in-process. A child that fails
otherwise, answers something else, or takes longer than :data:`TIMEOUT` raises
:class:`BootstrapError` with the reason. The answer holds the join tokens of the file:
it travels only over the child's stdout pipe, as the file's contents would.

``-P`` keeps the working directory off ``sys.path``, so a stray ``plait`` directory
there cannot stand in for the package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from plait.model.errors import FieldError
from plait.proxy.bootstrap import Bootstrap, BootstrapError, load_bootstrap

MODULE = "plait.proxy.bootstrap_reader"
TIMEOUT = 30.0


def child_command(path: str | os.PathLike[str]) -> list[str]:
    return [sys.executable, "-P", "-m", MODULE, os.fspath(path)]


def read_bootstrap(path: str | os.PathLike[str], *, timeout: float = TIMEOUT) -> Bootstrap:
    """The bootstrap in ``path``, read by a child; raises :class:`BootstrapError`."""
    filename = os.fspath(path)
    try:
        r = subprocess.run(
            child_command(path),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _failed(filename, f"the bootstrap reader did not finish: {exc}") from None
    try:
        answer = json.loads(r.stdout)
        if "errors" in answer:
            raise BootstrapError([FieldError(**e) for e in answer["errors"]])
        data = dict(answer["bootstrap"])
    except BootstrapError:
        raise
    except (ValueError, TypeError, KeyError):
        tail = r.stderr.decode(errors="replace").strip().splitlines()[-1:]
        detail = f": {tail[0]}" if tail else ""
        message = f"the bootstrap reader failed (exit status {r.returncode}){detail}"
        raise _failed(filename, message) from None
    return Bootstrap(**data)  # the same checks again (BootstrapError if refused)


def _failed(filename: str, message: str) -> BootstrapError:
    return BootstrapError([FieldError.in_file(filename, (), message)])


def answer(path: str) -> tuple[dict[str, Any], int]:
    """The child's answer for ``path`` and its exit status."""
    try:
        boot = load_bootstrap(path)
    except BootstrapError as exc:
        return {"errors": [e.to_dict() for e in exc.errors]}, 2
    return {"bootstrap": boot.to_data()}, 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"usage: python -m {MODULE} <bootstrap file>", file=sys.stderr)
        return 64
    out, status = answer(args[0])
    sys.stdout.write(json.dumps(out))
    sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
