"""Certificate authority commands: ``plait token ...``, ``plait ca ...`` and ``plait certs``.

- ``plait token create <service> [--ttl 1h]`` prints the join token's secret alone on
  stdout (so ``TOKEN=$(plait token create orders)`` works) and what to know about it on
  stderr; the secret is never shown again: the control plane keeps only its hash.
- ``plait token revoke <id>``, ``plait token list``.
- ``plait ca rotate [--force-switch]``, ``plait ca status``: root rotation.
- ``plait certs [--all]``: every identity's current certificate: serial, issuer, expiry,
  next renewal (half-life) and flags: ``EXPIRING`` (less than a quarter of its lifetime
  left), ``OLD-ROOT`` (it chains to the root a rotation is replacing), ``EXPIRED``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from plait.ca.profile import is_expiring
from plait.cli.api import ApiClient, ApiOption, CliError, StateDirOption, error_text
from plait.cli.output import console, err_console

token_app = typer.Typer(
    name="token", help="Join tokens: how a new proxy proves it may get a service's identity.",
    no_args_is_help=True,
)  # fmt: skip
ca_app = typer.Typer(
    name="ca", help="The service CA: root rotation and status.", no_args_is_help=True
)

STATE_STYLE = {"active": "green", "expired": "yellow", "revoked": "red"}
FLAG_STYLE = {"EXPIRING": "yellow", "OLD-ROOT": "yellow", "EXPIRED": "red"}


def parse_time(text: Any) -> datetime | None:
    """An API timestamp (``2026-01-02T03:04:05Z``) as an aware datetime, or None."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def relative(when: datetime | None, now: datetime) -> str:
    """``in 3h12m`` / ``5m ago``."""
    if when is None:
        return "?"
    seconds = int((when - now).total_seconds())
    ahead, seconds = seconds >= 0, abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        text = f"{days}d{hours}h"
    elif hours:
        text = f"{hours}h{minutes:02d}m"
    elif minutes:
        text = f"{minutes}m{secs:02d}s"
    else:
        text = f"{secs}s"
    return f"in {text}" if ahead else f"{text} ago"


def cert_flags(cert: dict[str, Any], now: datetime) -> list[str]:
    """The flags of one row of ``GET /v1/ca/certs`` at ``now``."""
    flags = []
    not_before, not_after = parse_time(cert.get("not_before")), parse_time(cert.get("not_after"))
    if not_before is not None and not_after is not None:
        if now >= not_after:
            flags.append("EXPIRED")
        elif is_expiring(not_before, not_after, now):
            flags.append("EXPIRING")
    if cert.get("old_root"):
        flags.append("OLD-ROOT")
    return flags


def current_certs(certs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest certificate of each identity (service, node)."""
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    for cert in certs:
        key = (str(cert.get("spiffe_id")), str(cert.get("node") or ""))
        seen = newest.get(key)
        if seen is None or str(cert.get("not_before")) >= str(seen.get("not_before")):
            newest[key] = cert
    return sorted(newest.values(), key=lambda c: (str(c.get("spiffe_id")), str(c.get("node"))))


# -- plait token ---------------------------------------------------------------------


@token_app.command("create")
def token_create(
    service: Annotated[str, typer.Argument(help="the service the token may get certificates for")],
    ttl: Annotated[str, typer.Option("--ttl", help="how long the token is valid")] = "1h",
    api: ApiOption = None,
    state_dir: StateDirOption = Path(".plait"),
) -> None:
    """Create a join token; its secret is printed once, on stdout."""
    client = ApiClient.connect(api, state_dir)
    status, obj = client.request("POST", "/v1/tokens", {"service": service, "ttl": ttl})
    if status != 200:
        raise CliError(f"cannot create a token for {service}: {error_text(obj)}")
    err_console.print(
        f"join token {obj['id']} for service {service}, valid until {obj['expires_at']}.\n"
        "The secret below is shown only now: the control plane keeps only its hash.\n"
        f"Trust bundle pin (sha256): {obj.get('bundle_version')}",
        highlight=False,
        markup=False,
    )
    print(obj["token"])


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="the token id (see `plait token list`)")],
    api: ApiOption = None,
    state_dir: StateDirOption = Path(".plait"),
) -> None:
    """Revoke a join token: it can no longer get certificates."""
    status, obj = ApiClient.connect(api, state_dir).request("DELETE", f"/v1/tokens/{token_id}")
    if status == 404:
        raise CliError(f"there is no token {token_id}: `plait token list` shows them")
    if status != 200:
        raise CliError(f"cannot revoke token {token_id}: {error_text(obj)}")
    console.print(f"revoked token {token_id} ({obj.get('service')})", markup=False)


@token_app.command("list")
def token_list(api: ApiOption = None, state_dir: StateDirOption = Path(".plait")) -> None:
    """List join tokens (never their secrets)."""
    tokens = ApiClient.connect(api, state_dir).get("/v1/tokens").get("tokens") or []
    if not tokens:
        console.print("no join tokens: create one with `plait token create <service>`")
        return
    table = Table(title="join tokens", title_justify="left")
    for name in ("ID", "SERVICE", "STATE", "CREATED", "EXPIRES"):
        table.add_column(name, no_wrap=True)
    for tok in tokens:
        state = str(tok.get("state"))
        style = STATE_STYLE.get(state, "")
        table.add_row(
            str(tok.get("id")),
            str(tok.get("service")),
            f"[{style}]{state}[/{style}]" if style else state,
            str(tok.get("created_at")),
            str(tok.get("expires_at")),
        )
    console.print(table)


# -- plait ca ------------------------------------------------------------------------


def print_ca_status(status: dict[str, Any]) -> None:
    console.print(
        f"trust domain {status.get('trust_domain')}: rotation [bold]{status.get('state')}[/bold]"
        + (" (existing PKI: rotate it outside plait)" if status.get("external") else ""),
        highlight=False,
    )
    console.print(f"bundle version {status.get('bundle_version')}", highlight=False)
    table = Table(title="CA generations", title_justify="left")
    for name in ("GEN", "ROLE", "ROOT", "ROOT SHA256", "ROOT EXPIRES", "ISSUER", "EXPIRES"):
        table.add_column(name, no_wrap=True)
    bundle = set(status.get("bundle") or [])
    for gen in status.get("generations") or []:
        roles = []
        if gen.get("id") == status.get("issuer"):
            roles.append("issuing")
        if gen.get("id") == status.get("old"):
            roles.append("old")
        if gen.get("id") in bundle:
            roles.append("trusted")
        table.add_row(
            str(gen.get("id")),
            ",".join(roles),
            str(gen.get("root")),
            str(gen.get("root_sha256", ""))[:16],
            str(gen.get("root_not_after")),
            str(gen.get("issuer")),
            str(gen.get("issuer_not_after")),
        )
    console.print(table)
    plan = status.get("plan") or {}
    if status.get("state") != "stable":
        console.print(f"next step: {plan.get('action') or 'wait'}: {plan.get('reason')}")
        if status.get("state") == "retiring" and status.get("retire_after"):
            console.print(f"old root can be retired after {status['retire_after']}")
    nodes = status.get("nodes") or []
    if nodes:
        table = Table(title="proxies' trust bundles", title_justify="left")
        table.add_column("NODE", no_wrap=True)
        table.add_column("BUNDLE", no_wrap=True)
        for node in nodes:
            version = node.get("bundle_version")
            current = version == status.get("bundle_version")
            shown = (version or "-")[:16]
            table.add_row(str(node.get("node_id")), shown if current else f"[yellow]{shown}[/]")
        console.print(table)


@ca_app.command("rotate")
def ca_rotate(
    force_switch: Annotated[
        bool,
        typer.Option(
            "--force-switch",
            help="issue from the new root now, even if some proxies do not trust it yet "
            "(they will refuse new certificates)",
        ),
    ] = False,
    api: ApiOption = None,
    state_dir: StateDirOption = Path(".plait"),
) -> None:
    """Begin a root rotation: a new root is distributed, then used once every proxy has it."""
    body = {"force_switch": True} if force_switch else {}
    status, obj = ApiClient.connect(api, state_dir).request("POST", "/v1/ca/rotate", body)
    if status != 200:
        raise CliError(f"cannot rotate: {error_text(obj)}")
    print_ca_status(obj)


@ca_app.command("status")
def ca_status(api: ApiOption = None, state_dir: StateDirOption = Path(".plait")) -> None:
    """The CA's roots, issuer, trust bundle and rotation progress."""
    print_ca_status(ApiClient.connect(api, state_dir).get("/v1/ca/status"))


# -- plait certs ---------------------------------------------------------------------


def certs(
    show_all: Annotated[
        bool, typer.Option("--all", help="every certificate, also replaced and expired ones")
    ] = False,
    api: ApiOption = None,
    state_dir: StateDirOption = Path(".plait"),
) -> None:
    """Every identity's certificate: serial, issuer, expiry, next renewal and flags."""
    answer = ApiClient.connect(api, state_dir).get("/v1/ca/certs" + ("?all=1" if show_all else ""))
    now = parse_time(answer.get("now"))
    if now is None:
        raise CliError("the control plane's answer has no 'now': is it a plait control plane?")
    rows = answer.get("certs") or []
    if not show_all:
        rows = current_certs(rows)
    if not rows:
        console.print("no certificates issued yet")
        return
    table = Table(title="certificates", title_justify="left")
    for name in ("IDENTITY", "NODE", "SERIAL", "ISSUER", "EXPIRES", "RENEW", "FLAGS"):
        table.add_column(name, no_wrap=True)
    for cert in rows:
        not_after = parse_time(cert.get("not_after"))
        flags = cert_flags(cert, now)
        table.add_row(
            str(cert.get("spiffe_id")),
            str(cert.get("node") or "-"),
            str(cert.get("serial")),
            str(cert.get("issuer")),
            f"{cert.get('not_after')} ({relative(not_after, now)})",
            relative(parse_time(cert.get("renew_after")), now),
            " ".join(f"[{FLAG_STYLE[f]}]{f}[/]" for f in flags) or "-",
        )
    console.print(table)
