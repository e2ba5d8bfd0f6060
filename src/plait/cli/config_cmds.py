"""Config commands: ``plait apply``, ``get``, ``delete`` and ``history``.

``apply`` validates every file locally first (the same parser the control plane uses),
so a broken file is reported with its file, document, field and line without a round
trip; the control plane validates again and either takes the whole file or nothing.
"""

from __future__ import annotations

import json
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.markup import escape
from rich.table import Table

from plait.cli.api import ApiClient, ApiOption, CliError, StateDirOption, error_text, resource_path
from plait.cli.output import console, err_console
from plait.model.errors import ConfigError
from plait.model.load import parse_documents
from plait.model.resources import KINDS

KIND_ALIASES = {"svc": "Service", "rt": "Route", "pol": "Policy", "policies": "Policy"}


class OutputFormat(StrEnum):
    table = "table"
    yaml = "yaml"
    json = "json"


def format_error(err: dict[str, Any]) -> str:
    """One error of a refused apply, written like the local validator writes it:
    ``file: document N (Kind/name): field: message (line L)``."""
    where = [str(err.get("file") or "<input>")]
    resource = "/".join(str(err[k]) for k in ("kind", "name") if err.get(k))
    if err.get("document"):
        where.append(f"document {err['document']}" + (f" ({resource})" if resource else ""))
    elif resource:
        where.append(resource)
    if err.get("field"):
        where.append(str(err["field"]))
    text = ": ".join([*where, str(err.get("message") or "invalid")])
    return f"{text} (line {err['line']})" if err.get("line") is not None else text


def validate_locally(path: Path, text: str) -> str | None:
    """The readable errors of an invalid file (file, document, field, line), or None."""
    try:
        parse_documents(text, str(path))
    except ConfigError as exc:
        return str(exc)
    return None


def apply(
    files: Annotated[
        list[Path], typer.Option("-f", "--file", help="YAML file to apply (repeatable)")
    ],
    api: ApiOption = None,
    state_dir: StateDirOption = Path(".plait"),
) -> None:
    """Validate YAML config files, then apply each as one new config version."""
    texts = []
    for path in files:
        try:
            texts.append((path, path.read_text()))
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc.strerror or exc}") from exc
    invalid = [(path, err) for path, text in texts if (err := validate_locally(path, text))]
    for _, err in invalid:
        err_console.print(err, highlight=False, markup=False)
    if invalid:
        err_console.print("[red]nothing was applied[/red]: fix the errors above and apply again")
        raise typer.Exit(1)
    client = ApiClient.connect(api, state_dir)
    for path, text in texts:
        status, obj = client.request("POST", "/v1/apply", {"filename": str(path), "yaml": text})
        if status != 200:
            errors = obj.get("errors") if isinstance(obj, dict) else None
            lines = [format_error(e) for e in errors or []] or [error_text(obj)]
            for line in lines:
                err_console.print(line, highlight=False, markup=False)
            refused = escape(str(path))
            err_console.print(f"[red]the control plane refused {refused}[/red]: nothing applied")
            raise typer.Exit(1)
        changed = obj.get("changed") or []
        console.print(
            f"applied {path}: version {obj.get('version')}" + ("" if changed else " (no changes)"),
            highlight=False,
        )
        for name in changed:
            console.print(f"  {name}", highlight=False, markup=False)


def normalise_kind(kind: str) -> str:
    """``route``/``routes``/``Route``/``rt`` -> ``Route``; unknown kinds are a CliError."""
    wanted = KIND_ALIASES.get(kind.lower(), kind).lower()
    for known in KINDS:
        if wanted in (known.lower(), known.lower() + "s"):
            return known
    raise CliError(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")


def describe(resource: dict[str, Any]) -> str:
    """A one-line summary of a resource for the table view."""
    spec = resource.get("spec") or {}
    if resource.get("kind") == "Service":
        ports = ", ".join(
            f"{p.get('port')}/{p.get('name', 'http')}" for p in spec.get("ports") or []
        )
        return (
            f"{spec.get('protocol', 'http')}, ports {ports or '80/http'}, "
            f"lb {spec.get('loadBalancer', 'least_request')}"
        )
    if resource.get("kind") == "Route":
        rules = [describe_rule(rule) for rule in spec.get("rules") or []]
        return f"{spec.get('service')}: " + "; ".join(rules)
    if resource.get("kind") == "Policy":
        allow = ", ".join(spec.get("allow") or []) or "any authenticated peer"
        deny = ", ".join(spec.get("deny") or [])
        text = f"{spec.get('service')}: {spec.get('mode', 'enforce')}, allow {allow}"
        return text + (f", deny {deny}" if deny else "")
    return json.dumps(spec, sort_keys=True)


def describe_rule(rule: dict[str, Any]) -> str:
    match = rule.get("match") or {}
    conditions = []
    if match.get("path"):
        conditions.append(f"path {match['path']}")
    if match.get("pathPrefix"):
        conditions.append(f"prefix {match['pathPrefix']}")
    for header in match.get("headers") or []:
        op = "!" if header.get("invert") else ""
        if header.get("exact") is not None:
            conditions.append(f"{header.get('name')}{op}={header['exact']}")
        elif header.get("prefix") is not None:
            conditions.append(f"{header.get('name')}{op}^={header['prefix']}")
        else:
            conditions.append(f"{op}{header.get('name')} present")
    backends = rule.get("backends") or [{}]
    total = sum(int(b.get("weight", 1)) for b in backends) or 1
    targets = []
    for backend in backends:
        subset = ",".join(f"{k}={v}" for k, v in sorted((backend.get("subset") or {}).items()))
        share = round(100 * int(backend.get("weight", 1)) / total)
        targets.append(f"{share}% {subset or 'all'}")
    return f"{' and '.join(conditions) or '*'} -> {', '.join(targets)}"


def print_resources(resources: list[dict[str, Any]], output: OutputFormat, title: str) -> None:
    if output is OutputFormat.json:
        console.print_json(json.dumps(resources))
    elif output is OutputFormat.yaml:
        console.print(yaml.safe_dump_all(resources, sort_keys=False), end="", markup=False)
    else:
        table = Table(title=title, title_justify="left")
        table.add_column("KIND", no_wrap=True)
        table.add_column("NAME", no_wrap=True)
        table.add_column("DETAILS")
        for res in resources:
            name = (res.get("metadata") or {}).get("name", "?")
            table.add_row(str(res.get("kind")), str(name), describe(res))
        console.print(table)


def get(
    kind: Annotated[
        str | None, typer.Argument(help="Service or Route (all kinds if omitted)")
    ] = None,
    name: Annotated[str | None, typer.Argument(help="resource name")] = None,
    output: Annotated[OutputFormat, typer.Option("-o", "--output")] = OutputFormat.table,
    api: ApiOption = None,
    state_dir: StateDirOption = Path(".plait"),
) -> None:
    """Show the applied config: every resource, one kind, or one resource."""
    client = ApiClient.connect(api, state_dir)
    if kind is not None and name is not None:
        kind = normalise_kind(kind)
        status, obj = client.request("GET", resource_path(kind, name))
        if status == 404:
            raise CliError(f"{kind}/{name} not found: `plait get {kind}` lists them")
        if status != 200:
            raise CliError(f"cannot get {kind}/{name}: {error_text(obj)}")
        if output is OutputFormat.table:
            print_resources([obj], output, f"{kind}/{name}")
        elif output is OutputFormat.json:
            console.print_json(json.dumps(obj))
        else:
            console.print(yaml.safe_dump(obj, sort_keys=False), end="", markup=False)
        return
    config = client.get("/v1/config")
    resources = config.get("resources") or []
    if kind is not None:
        kind = normalise_kind(kind)
        resources = [r for r in resources if r.get("kind") == kind]
    print_resources(resources, output, f"config version {config.get('version')}")


def delete(
    kind: Annotated[str, typer.Argument(help="Service or Route")],
    name: Annotated[str, typer.Argument(help="resource name")],
    api: ApiOption = None,
    state_dir: StateDirOption = Path(".plait"),
) -> None:
    """Delete one resource (a new config version)."""
    kind = normalise_kind(kind)
    client = ApiClient.connect(api, state_dir)
    status, obj = client.request("DELETE", resource_path(kind, name))
    if status == 404:
        raise CliError(f"{kind}/{name} not found: `plait get {kind}` lists them")
    if status != 200:
        raise CliError(f"cannot delete {kind}/{name}: {error_text(obj)}")
    console.print(f"deleted {kind}/{name}: version {obj.get('version')}", markup=False)


def history(api: ApiOption = None, state_dir: StateDirOption = Path(".plait")) -> None:
    """List the config versions, newest last."""
    versions = ApiClient.connect(api, state_dir).get("/v1/history").get("versions") or []
    table = Table(title="config history", title_justify="left")
    table.add_column("VERSION", justify="right", no_wrap=True)
    table.add_column("CREATED", no_wrap=True)
    table.add_column("SUMMARY")
    for entry in sorted(versions, key=lambda v: v.get("version", 0)):
        created = entry.get("created_at")
        when = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))
            if isinstance(created, (int, float))
            else "?"
        )
        table.add_row(str(entry.get("version")), when, str(entry.get("summary", "")))
    console.print(table)
