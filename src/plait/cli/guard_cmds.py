"""``plait guard``: registry changes the push guard held back (docs/resilience.md).

``list`` shows the held changes and the thresholds; ``approve ID`` pushes a held change
to the proxies; ``discard ID`` refuses it (the instances it would remove stay served).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.markup import escape
from rich.table import Table

from plait.cli.api import ApiClient, ApiOption, CliError, StateDirOption, error_text
from plait.cli.output import console

guard_app = typer.Typer(
    name="guard",
    help="The push guard: registry changes held back because they would gut a service.",
    no_args_is_help=True,
)

HoldId = Annotated[str, typer.Argument(help="the held change's id (see `plait guard list`)")]


def hold_table(holds: list[dict[str, Any]], title: str = "held changes (push guard)") -> Table:
    table = Table(title=title, title_justify="left")
    for name in ("ID", "SCOPE", "AGE", "HEALTHY", "REASON"):
        table.add_column(name, no_wrap=name != "REASON", overflow="fold")
    for hold in holds:
        change = hold.get("change") or {}
        scope = hold.get("service") or "registry"
        table.add_row(
            f"[bold red]{escape(str(hold.get('id')))}[/bold red]",
            escape(str(scope)),
            f"{float(hold.get('age') or 0):.0f}s",
            f"{change.get('healthy_before')} -> {change.get('healthy_after')}",
            escape(str(hold.get("reason"))),
        )
    return table


def held_notice(holds: list[dict[str, Any]]) -> None:
    """The prominent banner ``plait status`` prints when something is held."""
    if not holds:
        return
    console.print(
        f"[bold red]PUSH GUARD: {len(holds)} registry change(s) held back[/bold red] "
        "(the proxies keep the endpoints they have; approve with `plait guard approve ID`, "
        "refuse with `plait guard discard ID`)"
    )
    console.print(hold_table(holds))


@guard_app.command("list")
def guard_list(api: ApiOption = None, state_dir: StateDirOption = Path(".plait")) -> None:
    """Held changes, and the guard's thresholds."""
    info = ApiClient.connect(api, state_dir).get("/v1/guard")
    t = info.get("thresholds") or {}
    state = "on" if t.get("enabled", True) else "[red]off (--no-guard)[/red]"
    console.print(
        f"push guard {state}: hold a change that removes more than "
        f"{float(t.get('max_endpoint_loss', 0)):.0%} of a service's healthy endpoints, empties "
        f"a service, or removes more than {float(t.get('max_registry_loss', 0)):.0%} of the "
        f"registry within {float(t.get('window', 0)):g}s"
    )
    if info.get("syncing"):
        console.print("[yellow]syncing: no xDS is served until the registry has synced[/yellow]")
    holds = info.get("holds") or []
    if not holds:
        console.print("no change is held")
    else:
        console.print(hold_table(holds))
    pinned = info.get("pinned") or []
    if pinned:
        rows = ", ".join(f"{p['service']}@{p['address']}:{p['port']}" for p in pinned)
        console.print(f"pinned (a discarded change; served until they come back): {rows}")


def _act(action: str, hold_id: str, api: str | None, state_dir: Path) -> dict[str, Any]:
    client = ApiClient.connect(api, state_dir)
    status, obj = client.request("POST", f"/v1/guard/{quote(hold_id, safe='')}/{action}")
    if status != 200:
        raise CliError(f"cannot {action} {hold_id}: {error_text(obj)}")
    return dict(obj)


@guard_app.command("approve")
def guard_approve(
    hold_id: HoldId, api: ApiOption = None, state_dir: StateDirOption = Path(".plait")
) -> None:
    """Push a held change to the proxies."""
    info = _act("approve", hold_id, api, state_dir)
    console.print(f"approved {hold_id}: pushed; {info.get('held', 0)} change(s) still held")


@guard_app.command("discard")
def guard_discard(
    hold_id: HoldId, api: ApiOption = None, state_dir: StateDirOption = Path(".plait")
) -> None:
    """Refuse a held change: the instances it would remove stay served until they
    register again."""
    info = _act("discard", hold_id, api, state_dir)
    console.print(f"discarded {hold_id}; {info.get('held', 0)} change(s) still held")
