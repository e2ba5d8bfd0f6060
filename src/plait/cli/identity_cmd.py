"""``plait identity``: a service identity as files, for apps that speak mTLS themselves.

``plait identity --service S --token T --ca URL --out DIR`` makes a P-256 key in ``DIR``
(``key.pem``, 0600, never sent), gets a certificate for ``spiffe://<td>/svc/S`` from the
control plane's CA and writes ``cert.pem`` (leaf + intermediate) and ``bundle.pem``
(the trust roots), each atomically. It then stays in the foreground renewing at about
half-life and picking up root rotations (``--once``: write once and exit 0, or exit 1
with the reason). Without ``--ca`` the CA URL is asked from the control plane's HTTP API
(``--api``/``$PLAIT_API``/the mesh ``plait up`` started). How the CA's own certificate is
trusted on first contact (``--ca-bundle``, or first use on loopback only) is in
:mod:`plait.identity.manager`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from plait.cli.api import ApiOption, CliError, StateDirOption, resolve_api
from plait.cli.output import err_console
from plait.identity.https import HttpsError
from plait.identity.manager import Identity, IdentityError, IdentityManager


def identity(
    service: Annotated[str, typer.Option("--service", help="The service whose identity to get")],
    out: Annotated[Path, typer.Option("--out", help="Directory for key.pem, cert.pem, bundle.pem")],
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="PLAIT_TOKEN", help="Join token (`plait token create`)"),
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option("--token-file", help="Read the join token from this file")
    ] = None,
    ca: Annotated[str | None, typer.Option("--ca", help="The CA's https:// URL")] = None,
    ca_bundle: Annotated[
        Path | None, typer.Option("--ca-bundle", help="PEM roots that verify the CA's certificate")
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="Write the files once and exit")] = False,
    api: ApiOption = None,
    state_dir: StateDirOption = Path(".plait"),
) -> None:
    """Get a service's certificate as files and keep it renewed."""
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CliError(f"cannot read --token-file: {exc}") from None
    api_url = None if ca else resolve_api(api, state_dir)

    def updated(ident: Identity) -> None:
        err_console.print(
            f"[green]{ident.spiffe_id}[/]: certificate {ident.serial} valid until "
            f"{ident.not_after.isoformat()} -> {out}"
        )

    try:
        manager = IdentityManager(
            ca,
            service,
            token,
            out,
            updated,
            bundle_file=str(ca_bundle) if ca_bundle else None,
            api_url=api_url,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if once:
        try:
            asyncio.run(_once(manager))
        except (IdentityError, HttpsError, ValueError) as exc:
            raise CliError(f"identity for {service}: {exc}") from None
        return
    logging.basicConfig(level=os.environ.get("PLAIT_LOG_LEVEL", "INFO"))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(manager.run())


async def _once(manager: IdentityManager) -> None:
    manager.load_stored()
    await manager.issue()
