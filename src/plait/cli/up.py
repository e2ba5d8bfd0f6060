"""``plait up`` and ``plait down``: a whole demo mesh on this machine, and its end.

``plait up`` starts the control plane, applies ``examples/demo-mesh.yaml``, and starts
four demo hosts -- each one proxy and its app -- then waits until every proxy is ready
and a request to frontend's inbound listener has gone frontend -> orders -> inventory::

    host-frontend    frontend v1  --next orders
    host-orders-v1   orders v1    --next inventory     (90% of orders traffic)
    host-orders-v2   orders v2    --next inventory     (10%)
    host-inventory   inventory v1

Each demo Service declares ``calls``, exactly the ``--next`` services of its app (a unit
test keeps ``DEMO_HOSTS`` and the YAML in step), so each proxy gets only the services its
apps call: host-frontend's proxy has no route to frontend itself, and a client outside
the mesh enters through frontend's inbound listener.

It writes ``<state-dir>/up.json`` (API address, PIDs, ports, logs) for the other commands.
In the foreground, Ctrl-C or SIGTERM stops everything; with ``--detach`` it returns once
the mesh is ready and ``plait down`` stops it later, by the PIDs in ``up.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

import plait
from plait.cli.api import CliError, StateDirOption, load_state, state_path, write_state
from plait.cli.output import console, err_console, print_error
from plait.cli.supervisor import Process, StartError, pid_alive, process_start_time, stop_processes
from plait.cli.topology import App, Mesh

DEMO_HOSTS: tuple[tuple[str, tuple[App, ...]], ...] = (
    ("host-frontend", (App("frontend", "v1", next=("orders",)),)),
    ("host-orders-v1", (App("orders", "v1", next=("inventory",)),)),
    ("host-orders-v2", (App("orders", "v2", next=("inventory",)),)),
    ("host-inventory", (App("inventory", "v1"),)),
)
ENTRY_HOST, ENTRY_SERVICE = "host-frontend", "frontend"
EXPECTED_PATH = ["frontend", "orders", "inventory"]
DEMO_MESH = Path("examples") / "demo-mesh.yaml"


class _Stop(Exception):
    """SIGINT or SIGTERM arrived: stop the mesh."""


def _raise_stop(signum: int, _frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def find_mesh_file(explicit: Path | None) -> Path:
    """The demo mesh config: --mesh-file, ./examples/, or the source checkout's examples/."""
    if explicit is not None:
        if not explicit.is_file():
            raise CliError(f"mesh file {explicit} does not exist")
        return explicit
    checkout = Path(plait.__file__).resolve().parents[2] / DEMO_MESH
    for candidate in (DEMO_MESH, checkout):
        if candidate.is_file():
            return candidate
    raise CliError(f"cannot find {DEMO_MESH}: run from the plait checkout or pass --mesh-file")


def chain_ok(status: int, body: bytes) -> bool:
    """Whether an answer went frontend -> orders -> inventory (any versions)."""
    if status != 200:
        return False
    try:
        chain = json.loads(body).get("chain") or []
    except (ValueError, AttributeError):
        return False
    return [str(hop).split("/")[0] for hop in chain] == EXPECTED_PATH


def build_state(mesh: Mesh, detach: bool) -> dict[str, Any]:
    entry = mesh.hosts[ENTRY_HOST]
    state = mesh.state()
    state.update(
        started_at=time.time(),
        detached=detach,
        supervisor=None
        if detach
        else {"pid": os.getpid(), "start_time": process_start_time(os.getpid())},
        curl=[f"curl http://127.0.0.1:{entry.inbound_port(ENTRY_SERVICE)}/hello"],
        clusters=f"curl {entry.admin_url}/clusters",
    )
    return state


def print_summary(mesh: Mesh, state: dict[str, Any], first_answer: bytes, detach: bool) -> None:
    table = Table(title="hosts", title_justify="left")
    for name in ("HOST", "PROXY ADMIN", "OUTBOUND", "INBOUND", "APPS"):
        table.add_column(name, no_wrap=True)
    for host in mesh.hosts.values():
        inbound = ", ".join(f"{svc} {addr}" for svc, addr in (host.ready or {})["inbound"].items())
        apps = ", ".join(
            f"{a.name}/{a.version} :{host.app_ports[a.name]}"
            + (f" -> {','.join(a.next)}" if a.next else "")
            for a in host.apps
        )
        table.add_row(host.name, host.admin_url, host.proxy_url, inbound, apps)
    where = escape(str(mesh.state_dir))
    console.print(f"[bold green]plait mesh is up[/bold green] (state and logs in {where})")
    console.print(f"control plane API {mesh.api_url}  xDS {mesh.xds_address}")
    console.print(table)
    console.print("try it (frontend's inbound listener, as a client outside the mesh):")
    for command in state["curl"]:
        console.print(f"  {command}", soft_wrap=True, markup=False)
    console.print(f"first answer: {first_answer.decode().strip()}", soft_wrap=True, markup=False)
    console.print(
        f"each proxy gets only what its services call (spec.calls); {ENTRY_HOST}'s clusters:"
    )
    console.print(f"  {state['clusters']}", soft_wrap=True, markup=False)
    console.print("inspect: plait status | plait proxy-status | plait get Route")
    if detach:
        console.print("stop it: plait down" + _state_dir_flag(mesh.state_dir))
    else:
        console.print("Ctrl-C stops everything")


def _state_dir_flag(state_dir: Path) -> str:
    default = Path(".plait").absolute()
    return "" if state_dir == default else f" --state-dir {state_dir}"


def _clear_stale(state_dir: Path) -> None:
    """Proxy data and ready files of an earlier run describe processes that are gone."""
    for stale in state_dir.glob("proxy-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    shutil.rmtree(state_dir / "ready", ignore_errors=True)


def _watch(mesh: Mesh) -> None:
    """Run until a signal; report any process that exits on its own."""
    reported: set[str] = set()
    while True:
        for proc in mesh.supervisor.exited():
            if proc.name not in reported:
                reported.add(proc.name)
                err_console.print(
                    f"{proc.name} exited with code {proc.returncode}; see {proc.log}", markup=False
                )
        time.sleep(0.5)


def up(
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Return once the mesh is ready")
    ] = False,
    state_dir: StateDirOption = Path(".plait"),
    mesh_file: Annotated[
        Path | None,
        typer.Option(
            "--mesh-file",
            help="Config to apply (default: examples/demo-mesh.yaml)",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the mesh")] = 60.0,
) -> None:
    """Start a local demo mesh: control plane, 4 proxies and their demo apps."""
    state_dir.mkdir(parents=True, exist_ok=True)
    existing = load_state(state_dir)
    if existing and any(Process.from_json(p).alive() for p in existing.get("processes") or []):
        raise CliError(
            f"a mesh started by `plait up` is already running from {state_dir}: "
            f"run `plait down{_state_dir_flag(state_dir.absolute())}` first"
        )
    mesh_path = find_mesh_file(mesh_file)
    _clear_stale(state_dir)
    mesh = Mesh(state_dir)
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    ready, code = False, 0
    try:
        with console.status("starting the control plane") as progress:
            mesh.start_control()
            progress.update(f"applying {mesh_path}")
            mesh.apply(mesh_path)
            progress.update("starting proxies and apps")
            for name, apps in DEMO_HOSTS:
                mesh.add_host(name, apps, wait=False)
            mesh.wait_started()
            progress.update("waiting for every proxy to be ready")
            mesh.wait_ready(timeout)
            progress.update("waiting for frontend -> orders -> inventory")
            _, body = mesh.wait_for_request(
                ENTRY_HOST, f"http://{ENTRY_SERVICE}/hello", chain_ok, timeout, inbound=True
            )
        state = build_state(mesh, detach)
        write_state(state_dir, state)
        ready = True
        print_summary(mesh, state, body, detach)
        if not detach:
            _watch(mesh)
    except (_Stop, KeyboardInterrupt):
        console.print("stopping the mesh")
    except (StartError, CliError, OSError) as exc:
        print_error(f"plait up failed: {exc}")
        code = 1
    finally:
        if not (detach and ready):
            for signum in previous:
                signal.signal(signum, signal.SIG_IGN)
            mesh.stop()
            state_path(state_dir).unlink(missing_ok=True)
            if ready:
                console.print("the mesh is stopped")
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    if code:
        raise typer.Exit(code)


def down(
    state_dir: StateDirOption = Path(".plait"),
    timeout: Annotated[float, typer.Option(help="Seconds before SIGKILL")] = 10.0,
) -> None:
    """Stop every process `plait up` started (by the PIDs in its state file)."""
    state = load_state(state_dir)
    if state is None:
        console.print(f"nothing to stop: {state_path(state_dir)} does not exist", markup=False)
        return
    procs = [Process.from_json(p) for p in state.get("processes") or []]
    was_alive = {p.name: p.alive() for p in procs}
    supervisor = state.get("supervisor") or {}
    if supervisor.get("pid") and pid_alive(supervisor["pid"], supervisor.get("start_time")):
        # A foreground `plait up`: let it stop its mesh in order, then check its work.
        foreground = Process("plait up", "supervisor", int(supervisor["pid"]), [], Path("-"))
        foreground.start_time = supervisor.get("start_time")
        stop_processes([foreground], timeout + 5.0)
    outcome = stop_processes(procs, timeout)
    table = Table(title=f"stopped (from {state_path(state_dir)})", title_justify="left")
    for name in ("NAME", "PID", "RESULT"):
        table.add_column(name, no_wrap=True)
    for proc in procs:
        result = outcome[proc.name]
        if result == "not running" and was_alive[proc.name]:
            result = "stopped"
        table.add_row(proc.name, str(proc.pid), result)
    console.print(table)
    left = [p for p in procs if p.alive()]
    if left:
        raise CliError("still running: " + ", ".join(f"{p.name} (pid {p.pid})" for p in left))
    state_path(state_dir).unlink(missing_ok=True)
