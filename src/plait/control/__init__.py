"""The control plane: config store, registry, per-node xDS snapshots, ADS server, HTTP API.

Pure cores (no sockets, no clock):

- ``registry`` — service instances as per-node leases renewed by heartbeats; expiry; the
  served view and whether a heartbeat changed it.
- ``cache`` — per-node snapshots (from :mod:`plait.xds.translate`), recompute, and
  what is due to be pushed to each stream.
- ``watch`` — one stream's xDS state: sent/acked/NACKed versions, what the client holds
  (complete or changed-only pushes), SYNCED/STALE/NACKED.

Shells:

- ``store`` — SQLite (``<data_dir>/plait.db``): numbered config versions, each the whole
  config; registry leases.
- ``plane`` — :class:`~plait.control.plane.ControlPlane`, the one place that changes
  state: apply/delete config, heartbeats, lease sweeps, coalesced pushes.
- ``ads`` — grpc.aio ``AggregatedDiscoveryService`` (state of the world), one coroutine
  per stream.
- ``api`` — the JSON HTTP API of docs/internals.md, on :mod:`plait.jsonhttp`.
- ``server`` — ``run_control()`` and ``main()``: the ``plait control`` process
  (``python -m plait.control``).

A change flows: API -> plane (store commit or registry) -> cache recompute -> each
affected stream's event -> ADS pushes the types whose version moved, clusters first.
"""
