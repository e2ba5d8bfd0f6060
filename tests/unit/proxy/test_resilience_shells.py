"""Small pieces around the last-known-good config: registrar failover, /ready texts, the
``plait proxy-status`` line (docs/resilience.md)."""

from __future__ import annotations

import asyncio
from typing import Any

from plait.cli.status_cmds import config_source_lines
from plait.proxy.admin import AdminServer
from plait.proxy.dataplane import DataPlane
from plait.proxy.lkg import LkgMeta
from plait.proxy.main import ConfigSource
from plait.proxy.registration import Registrar
from plait.proxy.runtime import Listener, ProxyConfig
from plait.xds.types import CLUSTER


def test_registrar_tries_the_next_api_and_sticks_to_it() -> None:
    calls: list[str] = []

    async def request(url: str, *_: Any) -> tuple[int, Any]:
        calls.append(url)
        if url == "http://a":
            raise ConnectionRefusedError("down")
        return 200, {"ok": True}

    extra = {"config_source": {"source": "live"}}
    registrar = Registrar(
        ["http://a", "http://b"], "n", list, 1, 10, request=request, extra=lambda: extra
    )
    assert asyncio.run(registrar.heartbeat())
    assert asyncio.run(registrar.heartbeat())
    assert calls == ["http://a", "http://b", "http://b"]
    assert registrar.api_url == "http://b"


def test_registrar_fails_when_every_api_fails() -> None:
    async def request(url: str, *_: Any) -> tuple[int, Any]:
        return 503, {"error": "syncing"}

    registrar = Registrar(["http://a", "http://b"], "n", list, 1, 10, request=request)
    assert not asyncio.run(registrar.heartbeat())
    assert registrar.last_error == "RuntimeError: HTTP 503: syncing"


def meta() -> LkgMeta:
    return LkgMeta("/d/lkg.dat", "n", 1_700_000_000.0, {CLUSTER: "c1"}, None, {})


def ready_dp() -> DataPlane:
    dp = DataPlane("n")
    dp.apply(ProxyConfig(listeners={"outbound": Listener("outbound", "127.0.0.1", 1, "outbound")}))
    return dp


def test_ready_says_where_the_config_comes_from() -> None:
    source = ConfigSource("last-known-good", meta())
    admin = AdminServer(ready_dp(), source=source)
    status, _, body = admin.handle("GET", "/ready")
    assert (status, body) == (
        200,
        b"ready: serving last-known-good config version CDS=c1 from 2023-11-14T22:13:20Z\n",
    )
    source.name = "live"
    assert (
        admin.handle("GET", "/ready")[2] == b"ready: serving live config from the control plane\n"
    )


def test_not_ready_names_the_bad_file() -> None:
    source = ConfigSource(lkg_error="/d/lkg.dat: checksum mismatch (...)")
    status, _, body = AdminServer(DataPlane("n"), source=source).handle("GET", "/ready")
    assert status == 503
    assert b"/d/lkg.dat: checksum mismatch" in body


def test_heartbeat_field() -> None:
    assert ConfigSource("last-known-good", meta()).heartbeat() == {
        "config_source": {
            "source": "last-known-good",
            "version": "CDS=c1",
            "saved_at": "2023-11-14T22:13:20Z",
        }
    }


def test_proxy_status_line() -> None:
    nodes = [
        {"node_id": "b", "config_source": {"source": "live"}},
        {
            "node_id": "a",
            "config_source": {"source": "last-known-good", "version": "CDS=c1", "saved_at": "T"},
        },
        {"node_id": "c"},
    ]
    assert config_source_lines(nodes) == ["a: serving last-known-good config version CDS=c1 from T"]
