"""The demo app's chain logic, and its calls through a (fake) HTTP proxy."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from plait.demo.app import (
    AppConfig,
    DownstreamClient,
    DownstreamResult,
    NextHop,
    compose_reply,
    handle,
    parse_next,
    request_path,
)
from plait.demo.http import Head, parse_head

ORDERS = AppConfig(name="orders", version="v2", next=(NextHop("inventory"),))


def ok(service: str, *chain: str) -> DownstreamResult:
    return DownstreamResult(service, 200, body=json.dumps({"chain": list(chain)}).encode())


def reply_for(results: list[DownstreamResult], method: str = "GET") -> tuple[int, dict]:
    return compose_reply(
        ORDERS, method=method, path="/a", request_id="r1", body_length=3, results=results
    )


def test_leaf_chain_is_its_own_hop() -> None:
    status, reply = compose_reply(
        AppConfig(name="inventory"),
        method="GET",
        path="/x?y=1",
        request_id="rid",
        body_length=0,
        results=[],
    )
    assert status == 200
    assert reply == {
        "service": "inventory",
        "version": "v1",
        "path": "/x?y=1",
        "request_id": "rid",
        "chain": ["inventory/v1"],
    }


def test_chain_is_own_hop_then_each_downstream_chain() -> None:
    status, reply = reply_for(
        [ok("inventory", "inventory/v1"), ok("pricing", "pricing/v3", "db/v1")]
    )
    assert status == 200
    assert reply["chain"] == ["orders/v2", "inventory/v1", "pricing/v3", "db/v1"]


def test_post_reports_method_and_body_length() -> None:
    _, reply = reply_for([ok("inventory", "inventory/v1")], method="POST")
    assert reply["method"] == "POST"
    assert reply["body_length"] == 3


def test_downstream_error_is_502_with_status_and_proxy_status() -> None:
    failed = DownstreamResult(
        "inventory",
        503,
        proxy_status='host-orders; error=destination_unavailable; details="no healthy endpoint"',
        body=b"no healthy upstream",
    )
    status, reply = reply_for([failed])
    assert status == 502
    assert reply["chain"] == ["orders/v2"]
    assert reply["error"] == "inventory answered 503"
    assert reply["downstream"]["status"] == 503
    assert "destination_unavailable" in reply["downstream"]["proxy_status"]
    assert reply["downstream"]["body"] == "no healthy upstream"


def test_nested_failure_keeps_the_partial_chain() -> None:
    nested = {"error": "db answered 504", "chain": ["inventory/v1"]}
    status, reply = reply_for(
        [DownstreamResult("inventory", 502, body=json.dumps(nested).encode())]
    )
    assert status == 502
    assert reply["chain"] == ["orders/v2", "inventory/v1"]
    assert reply["downstream"]["reply"] == nested


def test_unreachable_and_chainless_downstreams_are_errors() -> None:
    status, reply = reply_for([DownstreamResult("inventory", None, error="connection refused")])
    assert (status, reply["error"]) == (502, "cannot reach inventory: connection refused")
    status, reply = reply_for([DownstreamResult("inventory", 200, body=b"hello")])
    assert (status, reply["error"]) == (502, "inventory answered 200 without a chain")


def test_request_path_and_next_parsing() -> None:
    assert request_path("http://orders/a/b?c=1") == "/a/b?c=1"
    assert request_path("http://orders") == "/"
    assert request_path("/a") == "/a"
    assert parse_next("inventory") == NextHop("inventory")
    assert parse_next("inventory=127.0.0.1:9002") == NextHop("inventory", ("127.0.0.1", 9002))


def test_healthz_follows_the_fail_health_file(tmp_path) -> None:
    flag = tmp_path / "fail"
    cfg = AppConfig(name="orders", fail_health_file=flag)
    head = parse_head(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n", response=False)
    client = DownstreamClient(proxy=None)
    assert asyncio.run(handle(cfg, client, head, b""))[0::2] == (200, b"ok")
    flag.touch()
    assert asyncio.run(handle(cfg, client, head, b""))[0::2] == (503, b"unhealthy")


class FakeProxy:
    """An HTTP proxy stand-in: records requests per connection, answers as ``inventory``."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, Head]] = []
        self.connections = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn_id = self.connections
        while True:
            try:
                data = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.CancelledError):
                break
            head = parse_head(data, response=False)
            self.requests.append((conn_id, head))
            body = json.dumps({"chain": ["inventory/v1"]}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        writer.close()


def test_calls_go_through_the_proxy_in_absolute_form_on_one_connection() -> None:
    async def scenario() -> tuple[FakeProxy, list[tuple[int, list[tuple[str, str]], bytes]]]:
        fake = FakeProxy()
        sock = socket.create_server(("127.0.0.1", 0))
        server = await asyncio.start_server(fake.serve, sock=sock)
        cfg = AppConfig(name="orders", next=(NextHop("inventory"),))
        client = DownstreamClient(proxy=sock.getsockname()[:2])
        request = parse_head(
            b"GET /items?id=7 HTTP/1.1\r\nhost: orders\r\nx-request-id: abc\r\n"
            b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n",
            response=False,
        )
        answers = [await handle(cfg, client, request, b"") for _ in range(3)]
        client.close()
        server.close()
        return fake, answers

    fake, answers = asyncio.run(scenario())
    for status, headers, body in answers:
        assert status == 200
        assert ("x-request-id", "abc") in headers
        reply = json.loads(body)
        assert reply["chain"] == ["orders/v1", "inventory/v1"]
        assert reply["request_id"] == "abc"
    assert [conn for conn, _ in fake.requests] == [1, 1, 1]  # kept alive
    _, head = fake.requests[0]
    assert head.start == ("GET", "http://inventory/items?id=7", "HTTP/1.1")
    assert head.get("host") == "inventory"
    assert head.get("x-request-id") == "abc"
    assert (head.get("traceparent") or "").startswith("00-0af7")


@pytest.mark.parametrize("target", ["/a", "http://orders/a"])
def test_request_id_is_created_when_absent(target: str) -> None:
    head = parse_head(f"GET {target} HTTP/1.1\r\nhost: orders\r\n\r\n".encode(), response=False)
    status, headers, body = asyncio.run(
        handle(AppConfig(name="orders"), DownstreamClient(None), head, b"")
    )
    reply = json.loads(body)
    assert status == 200 and reply["path"] == "/a"
    assert len(reply["request_id"]) == 32
    assert ("x-request-id", reply["request_id"]) in headers
