"""The ``plait`` command: every subcommand is registered here, one line each.

Process commands hand their arguments unchanged to the component's own argparse
``main`` (``plait control``, ``plait proxy``, ``plait demo-app``); config and inspection
commands talk to the control plane's HTTP API (:mod:`plait.cli.api`); ``plait up`` and
``plait down`` run a local demo mesh (:mod:`plait.cli.up`, :mod:`plait.cli.topology`).
"""

from __future__ import annotations

import sys

import typer

from plait.cli import ca_cmds, config_cmds, guard_cmds, identity_cmd, status_cmds, up
from plait.cli.api import CliError
from plait.cli.output import print_error

app = typer.Typer(
    name="plait",
    help="plait: a service mesh in Python. Start with `plait up`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Arguments pass through untouched (including --help) to the component's own parser.
PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command(context_settings=PASSTHROUGH, add_help_option=False)
def control(ctx: typer.Context) -> None:
    """Run the control plane (xDS server, registry, config store, HTTP API)."""
    from plait.control.server import main as control_main

    raise typer.Exit(control_main(list(ctx.args)))


@app.command(context_settings=PASSTHROUGH, add_help_option=False)
def proxy(ctx: typer.Context) -> None:
    """Run a proxy: plait proxy --config bootstrap.yaml"""
    from plait.proxy.main import main as proxy_main

    raise typer.Exit(proxy_main(list(ctx.args)))


@app.command("demo-app", context_settings=PASSTHROUGH, add_help_option=False)
def demo_app(ctx: typer.Context) -> None:
    """Run the demo HTTP service that reports the chain of services a request took."""
    from plait.demo.app import main as demo_main

    raise typer.Exit(demo_main(list(ctx.args)))


app.command()(config_cmds.apply)
app.command()(config_cmds.get)
app.command()(config_cmds.delete)
app.command()(config_cmds.history)
app.command()(status_cmds.status)
app.command("proxy-status")(status_cmds.proxy_status)
app.command()(up.up)
app.command()(up.down)
app.add_typer(ca_cmds.token_app)
app.add_typer(ca_cmds.ca_app)
app.command()(ca_cmds.certs)
app.command()(identity_cmd.identity)
app.add_typer(guard_cmds.guard_app)


def main() -> None:
    try:
        app()
    except CliError as exc:
        print_error(str(exc))
        sys.exit(1)


if __name__ == "__main__":
    main()
