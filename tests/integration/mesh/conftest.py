"""The ``mesh`` fixture: one whole local mesh per test module (see mesh_harness)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from mesh_harness import DEMO_HOSTS, start_mesh, stop_and_check

from plait.cli.topology import Mesh


@pytest.fixture(scope="module")
def mesh(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mesh]:
    hosts = getattr(request.module, "MESH_HOSTS", DEMO_HOSTS)
    state_dir = tmp_path_factory.mktemp("mesh") / ".plait"
    started = time.monotonic()
    m = start_mesh(state_dir, hosts)
    print(f"mesh of {len(hosts)} hosts ready in {time.monotonic() - started:.2f}s")
    try:
        yield m
    finally:
        stop_and_check(m)
