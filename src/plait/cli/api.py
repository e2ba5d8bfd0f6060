"""How the CLI finds the control plane and talks to its HTTP API (docs/internals.md).

The API address comes from, in order: ``--api URL``, the ``PLAIT_API`` environment
variable, or the ``up.json`` state file that ``plait up`` writes in its state directory.
Every failure a user can cause or fix is a :class:`CliError` whose text says what is wrong
and what to do; ``plait.cli.main`` prints it and exits 1.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from plait.fsutil import write_json_atomic
from plait.jsonhttp import request_json_sync

STATE_FILE = "up.json"
DEFAULT_STATE_DIR = Path(".plait")

ApiOption = Annotated[
    str | None,
    typer.Option(
        "--api",
        help="Control plane API URL (default: $PLAIT_API, else the mesh `plait up` started)",
        show_default=False,
    ),
]
StateDirOption = Annotated[
    Path,
    typer.Option(
        "--state-dir", envvar="PLAIT_STATE_DIR", help="Where `plait up` keeps its state and logs"
    ),
]


class CliError(Exception):
    """An error for the user: ``str()`` says what is wrong and what to do."""


def state_path(state_dir: Path) -> Path:
    return state_dir / STATE_FILE


def load_state(state_dir: Path) -> dict[str, Any] | None:
    """The state ``plait up`` wrote, or None if there is none."""
    path = state_path(state_dir)
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {path}: {exc}; remove it if no mesh is running") from exc
    return state if isinstance(state, dict) else None


def write_state(state_dir: Path, state: dict[str, Any]) -> Path:
    """Write the state file atomically (temp file + rename)."""
    path = state_path(state_dir)
    write_json_atomic(path, state, indent=2, newline=True)
    return path


def resolve_api(api: str | None, state_dir: Path) -> str:
    """The control plane API URL, from --api, $PLAIT_API or the state file, in that order."""
    if api:
        return api.rstrip("/")
    if os.environ.get("PLAIT_API"):
        return os.environ["PLAIT_API"].rstrip("/")
    state = load_state(state_dir)
    if state and isinstance(state.get("api"), str):
        return str(state["api"]).rstrip("/")
    raise CliError(
        "no control plane address: start a local mesh with `plait up`, "
        "or pass --api URL (or set PLAIT_API)"
    )


def request_json(
    base_url: str, method: str, path: str, body: Any = None, timeout: float = 5.0
) -> tuple[int, Any]:
    """One JSON request; ``(status, decoded body)``. Raises OSError if nothing answers."""
    return request_json_sync(base_url, method, path, body, timeout)


@dataclass(frozen=True)
class ApiClient:
    """The control plane's HTTP API, with errors turned into :class:`CliError`."""

    base_url: str
    timeout: float = 5.0

    @classmethod
    def connect(cls, api: str | None, state_dir: Path) -> ApiClient:
        return cls(resolve_api(api, state_dir))

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        try:
            return request_json(self.base_url, method, path, body, self.timeout)
        except (OSError, ConnectionError, TimeoutError) as exc:
            raise CliError(
                f"cannot reach the control plane at {self.base_url} ({exc}): "
                "start it with `plait up` or pass --api"
            ) from exc

    def get(self, path: str) -> Any:
        """GET ``path``; any status but 2xx is a CliError with the server's message."""
        status, obj = self.request("GET", path)
        if not 200 <= status < 300:
            raise CliError(f"GET {path}: {status}: {error_text(obj)}")
        return obj


def error_text(obj: Any) -> str:
    if isinstance(obj, dict) and obj.get("error"):
        return str(obj["error"])
    return json.dumps(obj) if obj is not None else "no details"


def resource_path(kind: str, name: str) -> str:
    return f"/v1/config/{quote(kind, safe='')}/{quote(name, safe='')}"
