"""The ``plait`` command line.

- ``main``: the typer app; every subcommand is registered there.
- ``api``: finding the control plane (--api, $PLAIT_API, ``.plait/up.json``) and its HTTP API.
- ``config_cmds``: apply, get, delete, history. ``status_cmds``: status, proxy-status.
- ``up``: ``plait up`` / ``plait down``, the local demo mesh.
- ``topology`` (``Mesh``), ``hosts`` (``App``, ``Host``), ``supervisor`` (processes by PID):
  the reusable pieces ``plait up`` and the integration tests build meshes from.
- ``output``: the consoles.
"""
