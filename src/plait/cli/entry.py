"""The ``plait`` console script: ``plait proxy ...`` without the rest of the CLI.

``plait proxy`` runs a long-lived data-plane process; importing the whole CLI first
(typer, rich, and through the config commands pydantic and cryptography: about 30 MB)
would stay in its memory for its whole life (docs/internals.md, "Memory"). So the
console script looks at its first argument: ``proxy`` goes straight to
:func:`plait.proxy.main.main` (which parses the arguments exactly as
``plait proxy`` always did: they pass through unchanged), everything else to the typer
app in :mod:`plait.cli.main`.
"""

from __future__ import annotations

import sys


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "proxy":
        from plait.proxy.main import main as proxy_main

        sys.argv[0] = "plait proxy"
        sys.exit(proxy_main(sys.argv[2:]))
    from plait.cli.main import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
