"""Inspection commands: ``plait status`` and ``plait proxy-status``.

``status`` joins what ``plait up`` started (its state file: processes, PIDs, logs) with
what the control plane knows (services, registered instances and their health, and each
proxy's xDS sync state). ``proxy-status`` is the per-proxy, per-type xDS view.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from plait.cli.api import ApiClient, ApiOption, CliError, StateDirOption, load_state
from plait.cli.guard_cmds import held_notice
from plait.cli.output import console, print_error
from plait.cli.supervisor import Process

TYPE_SHORT = {
    "type.googleapis.com/envoy.config.listener.v3.Listener": "LDS",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration": "RDS",
    "type.googleapis.com/envoy.config.cluster.v3.Cluster": "CDS",
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment": "EDS",
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret": "SDS",
}
STATUS_STYLE = {"SYNCED": "green", "STALE": "yellow", "NACKED": "red"}


def short_type(type_url: str) -> str:
    return TYPE_SHORT.get(type_url, type_url.rsplit(".", 1)[-1])


def short_version(version: str | None) -> str:
    if not version:
        return "-"
    return version[:8]


def type_cell(state: dict[str, Any]) -> str:
    """``acked`` version, or ``acked -> sent`` while a newer version waits for its ACK."""
    acked, sent = state.get("acked"), state.get("sent")
    if sent and sent != acked:
        return f"{short_version(acked)} -> {short_version(sent)}"
    return short_version(acked)


def styled_status(status: str) -> str:
    style = STATUS_STYLE.get(status)
    return f"[{style}]{status}[/{style}]" if style else status


def yes_no(value: bool) -> str:
    return "[green]yes[/green]" if value else "[red]no[/red]"


def nack_errors(node: dict[str, Any]) -> str:
    errors = [
        f"{short_type(url)}: {state['error']}"
        for url, state in (node.get("types") or {}).items()
        if state.get("error")
    ]
    if node.get("translate_error"):
        errors.append(f"translate: {node['translate_error']}")
    return "\n".join(errors)


def proxy_table(nodes: list[dict[str, Any]], title: str = "proxies (xDS)") -> Table:
    type_urls = sorted(
        {url for node in nodes for url in node.get("types") or {}},
        key=lambda url: list(TYPE_SHORT).index(url) if url in TYPE_SHORT else len(TYPE_SHORT),
    )
    table = Table(title=title, title_justify="left")
    table.add_column("NODE", no_wrap=True)
    table.add_column("CONNECTED", no_wrap=True)
    table.add_column("STATUS", no_wrap=True)
    for url in type_urls:
        table.add_column(short_type(url), no_wrap=True)
    table.add_column("NACK ERROR", overflow="fold")
    for node in sorted(nodes, key=lambda n: str(n.get("node_id"))):
        types = node.get("types") or {}
        table.add_row(
            str(node.get("node_id")),
            yes_no(bool(node.get("connected"))),
            styled_status(str(node.get("status"))),
            *(type_cell(types[url]) if url in types else "-" for url in type_urls),
            nack_errors(node),
        )
    return table


def process_table(state: dict[str, Any]) -> Table:
    table = Table(title="processes (plait up)", title_justify="left")
    for name in ("NAME", "ROLE", "PID", "ALIVE"):
        table.add_column(name, no_wrap=True)
    table.add_column("LOG", overflow="fold")
    for raw in state.get("processes") or []:
        proc = Process.from_json(raw)
        table.add_row(proc.name, proc.role, str(proc.pid), yes_no(proc.alive()), str(proc.log))
    return table


def service_table(status: dict[str, Any]) -> Table:
    table = Table(title=f"services (config version {status.get('config_version')})")
    table.title_justify = "left"
    for name in ("SERVICE", "PROTOCOL", "INSTANCES", "HEALTHY", "ROUTE"):
        table.add_column(name, no_wrap=True)
    for svc in status.get("services") or []:
        total, healthy = svc.get("instances", 0), svc.get("healthy", 0)
        style = "green" if total and healthy == total else "yellow" if healthy else "red"
        table.add_row(
            str(svc.get("name")),
            str(svc.get("protocol", "")),
            str(total),
            f"[{style}]{healthy}[/{style}]",
            str(svc.get("route") or "-"),
        )
    return table


def instance_table(instances: list[dict[str, Any]]) -> Table:
    table = Table(title="instances (registry)", title_justify="left")
    for name in ("SERVICE", "NODE", "ADDRESS", "LABELS", "HEALTH", "LEASE"):
        table.add_column(name, no_wrap=True)
    for inst in sorted(instances, key=lambda i: (str(i.get("service")), str(i.get("node_id")))):
        labels = ",".join(f"{k}={v}" for k, v in sorted((inst.get("labels") or {}).items()))
        health = "[green]healthy[/green]" if inst.get("healthy") else "[red]unhealthy[/red]"
        expires = inst.get("expires_in")
        table.add_row(
            str(inst.get("service")),
            str(inst.get("node_id")),
            f"{inst.get('address')}:{inst.get('port')}",
            labels or "-",
            health,
            f"{expires:.0f}s" if isinstance(expires, (int, float)) else "-",
        )
    return table


def status(api: ApiOption = None, state_dir: StateDirOption = Path(".plait")) -> None:
    """Processes started by `plait up`, services, instances and proxy sync state."""
    state = load_state(state_dir)
    if state is not None:
        console.print(process_table(state))
    try:
        client = ApiClient.connect(api, state_dir)
        summary = client.get("/v1/status")
        instances = client.get("/v1/registry").get("instances") or []
        nodes = client.get("/v1/proxy-status").get("nodes") or []
    except CliError as exc:
        if state is None:
            raise
        print_error(str(exc))
        raise typer.Exit(1) from None
    held_notice((summary.get("guard") or {}).get("holds") or [])
    if summary.get("syncing"):
        console.print("[yellow]control plane syncing: no xDS served until proxies report[/yellow]")
    console.print(service_table(summary))
    console.print(instance_table(instances))
    console.print(proxy_table(nodes))


def proxy_status(api: ApiOption = None, state_dir: StateDirOption = Path(".plait")) -> None:
    """Each proxy's xDS state: connected, SYNCED/STALE/NACKED, versions, NACK errors."""
    nodes = ApiClient.connect(api, state_dir).get("/v1/proxy-status").get("nodes") or []
    if not nodes:
        console.print("no proxy has connected to the control plane yet")
        return
    console.print(proxy_table(nodes))
    for line in config_source_lines(nodes):
        console.print(line, markup=False)


def config_source_lines(nodes: list[dict[str, Any]]) -> list[str]:
    """One line per proxy serving its last-known-good config (docs/resilience.md)."""
    lines = []
    for node in sorted(nodes, key=lambda n: str(n.get("node_id"))):
        source = node.get("config_source") or {}
        if source.get("source") == "last-known-good":
            lines.append(
                f"{node.get('node_id')}: serving last-known-good config version "
                f"{source.get('version', '?')} from {source.get('saved_at', '?')}"
            )
    return lines
