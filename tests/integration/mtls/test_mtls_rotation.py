"""Certificates rotate under load with no failed request; a service moves from permissive
to strict while traffic runs; the root rotates under load (``POST /v1/ca/rotate``)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator

import pytest
from mtls_harness import MtlsMesh, Proxy, api_call, curl, strict_pair, wait_until

pytestmark = pytest.mark.timeout(240)


class Load:
    """A client loop through the caller's outbound listener, counting failures."""

    def __init__(self, proxy_addr: str) -> None:
        self.host, port = proxy_addr.rsplit(":", 1)
        self.port = int(port)
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
                conn.request("GET", "http://orders/", headers={"Host": "orders"})
                resp = conn.getresponse()
                body = resp.read()
                if resp.status == 200 and body == b"hello from orders\n":
                    self.ok += 1
                else:
                    self.failed.append(f"{resp.status} {resp.getheader('proxy-status')}")
            except (OSError, http.client.HTTPException) as exc:
                self.failed.append(repr(exc))
                conn = None
            time.sleep(0.01)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def identities(proxy: Proxy) -> dict[str, dict[str, object]]:
    return {i["service"]: i for i in json.loads(proxy.admin("/identities"))["identities"]}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MtlsMesh, Proxy, Proxy]]:
    m = MtlsMesh(tmp_path_factory.mktemp("mtls-rotation"), cert_ttl="6s")
    try:
        m.start_control()
        m.apply(strict_pair("permissive"))
        front = m.start_proxy("host-front", ["frontend"])
        orders = m.start_proxy("host-orders", ["orders"])
        wait_until(lambda: curl(front.outbound("frontend"), "http://orders/")[0] == 200, 60)
        yield m, front, orders
    finally:
        m.stop()


def test_permissive_to_strict_under_load(mesh: tuple[MtlsMesh, Proxy, Proxy]) -> None:
    m, front, orders = mesh
    with Load(front.outbound("frontend")) as load:
        time.sleep(1.5)
        m.apply(strict_pair("strict"))
        wait_until(lambda: '"tls_mode": "strict"' in orders.admin("/config_dump"), 20, 0.2)
        time.sleep(1.5)
    assert load.ok > 10
    assert load.failed == []


def test_certificates_rotate_under_load(mesh: tuple[MtlsMesh, Proxy, Proxy]) -> None:
    _, front, orders = mesh
    before = {p.name: identities(p) for p in (front, orders)}
    with Load(front.outbound("frontend")) as load:
        wait_until(
            lambda: all(
                identities(p)[s]["renewals"] >= before[p.name][s]["renewals"] + 3  # type: ignore[operator]
                for p, s in ((front, "frontend"), (orders, "orders"))
            ),
            40,
            0.5,
        )
    assert load.ok > 20
    assert load.failed == []
    assert identities(orders)["orders"]["alarm"] is False


def test_root_rotation_under_load(mesh: tuple[MtlsMesh, Proxy, Proxy]) -> None:
    m, front, orders = mesh
    status, answer = api_call(m.api, "GET", "/v1/ca/status")
    assert status == 200, answer
    with Load(front.outbound("frontend")) as load:
        status, answer = api_call(m.api, "POST", "/v1/ca/rotate", {})
        assert status == 200, answer
        # new certificates from the new root on both sides, then the old root retired
        wait_until(
            lambda: (
                api_call(m.api, "GET", "/v1/ca/status")[1].get("state") == "stable"
                and all(
                    identities(p)[s]["bundle_version"]
                    == api_call(m.api, "GET", "/v1/ca/bundle")[1]["version"]
                    for p, s in ((front, "frontend"), (orders, "orders"))
                )
            ),
            90,
            1.0,
        )
        time.sleep(2)
    assert load.ok > 20
    assert load.failed == []
    # the trust bundle the proxies got over SDS is the CA's current one (old root retired)
    bundle = api_call(m.api, "GET", "/v1/ca/bundle")[1]["bundle"]
    for p in (front, orders):
        sds = json.loads(p.admin("/config_dump"))["config"]["secrets"]["trust-bundle"]["trusted_ca"]
        assert sds.strip() == bundle.strip(), f"{p.name} serves a stale SDS trust bundle"
