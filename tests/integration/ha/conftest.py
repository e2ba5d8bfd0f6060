"""The ``etcd_cluster`` fixture: one 3-member etcd cluster on 127.0.0.1 for the session.

Started with ``scripts/etcd-cluster`` (which installs etcd-server with apt if missing);
tests share it and keep apart by each using its own key prefix. Stopped by PID at the end.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "etcd-cluster"


def load_cluster_script() -> Any:
    loader = importlib.machinery.SourceFileLoader("etcd_cluster_script", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


class Cluster:
    def __init__(self, script: Any, base: Path, state: dict[str, Any]) -> None:
        self.script = script
        self.base = base
        self.members: list[dict[str, Any]] = state["members"]

    @property
    def endpoints(self) -> str:
        return ",".join(m["client"].removeprefix("http://") for m in self.members)

    def url(self, prefix: str) -> str:
        return f"etcd://{self.endpoints}/{prefix.strip('/')}"

    def leader(self) -> dict[str, Any]:
        """The member that is the raft leader now (asked over /v3/maintenance/status)."""
        from plait.control.etcd import EtcdClient

        client = EtcdClient(self.endpoints)
        for m in self.members:
            host, port = m["client"].removeprefix("http://").split(":")
            try:
                st = client.member_status((host, int(port)))
            except OSError:
                continue
            if st["header"]["member_id"] == st.get("leader"):
                return m
        raise RuntimeError("no etcd member says it is the leader")

    def kill(self, member: dict[str, Any]) -> None:
        self.script.kill_member(member)


@pytest.fixture(scope="session")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    script = load_cluster_script()
    base = tmp_path_factory.mktemp("etcd")
    state = script.start(base, 3)
    try:
        yield Cluster(script, base, state)
    finally:
        script.stop(base)


@pytest.fixture
def etcd_prefix() -> str:
    return "/t-" + secrets.token_hex(6)


@pytest.fixture(scope="module")
def own_etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A 3-member cluster of the test module's own, for tests that kill members (the
    session ``etcd_cluster`` must keep all three for the other tests)."""
    script = load_cluster_script()
    base = tmp_path_factory.mktemp("etcd-own")
    state = script.start(base, 3)
    try:
        yield Cluster(script, base, state)
    finally:
        script.stop(base)
