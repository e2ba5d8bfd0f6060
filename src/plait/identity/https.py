"""A tiny JSON-over-HTTPS client for the CA API (one request per connection).

The server's certificate is verified against a given trust bundle (never the system
store: the control plane's certificate comes from the mesh CA), and, since every workload
holds a certificate from that same CA, the server must then present the control plane's
own SPIFFE id (``expect_uri``, ``spiffe://<td>/svc/plait-control``), checked before the
request is written. A client certificate may be presented (the current identity, for
renewals). ``verify=False`` exists for exactly one
case, the loopback first contact described in :mod:`plait.identity.manager`.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any
from urllib.parse import urlsplit

import httptools

from plait.jsonhttp import read_json_response, request_head
from plait.proxy.peer_identity import PeerRejected, check_peer


class HttpsError(OSError):
    """The request could not be made or answered (network, TLS, or a malformed reply)."""


def client_context(bundle_pem: bytes | None, *, verify: bool = True) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if verify:
        if not bundle_pem:
            raise ValueError("a trust bundle is needed to verify the CA's certificate")
        ctx.load_verify_locations(cadata=bundle_pem.decode("ascii"))
        ctx.check_hostname = False  # the SPIFFE id is checked instead (expect_uri)
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def split_base(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"expected an https:// URL such as https://127.0.0.1:18443, got {url!r}")
    return parts.hostname, parts.port or 443, parts.path.rstrip("/")


async def request(
    base_url: str,
    method: str,
    path: str,
    ctx: ssl.SSLContext,
    body: Any = None,
    *,
    timeout: float = 10.0,
    headers: dict[str, str] | None = None,
    expect_uri: str | None = None,
) -> tuple[int, Any]:
    """``(status, decoded JSON body)``; raises :class:`HttpsError` when it cannot."""
    host, port, prefix = split_base(base_url)
    payload = b"" if body is None else json.dumps(body).encode()
    head = request_head(
        method, host, port, prefix + path, len(payload), json_body=body is not None, headers=headers
    )

    async def exchange() -> tuple[int, Any]:
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host)
        try:
            if expect_uri is not None:
                sslobj = writer.get_extra_info("ssl_object")
                der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
                verdict = check_peer(der, None, (expect_uri,))
                if isinstance(verdict, PeerRejected):
                    raise HttpsError(f"{base_url}: not the control plane: {verdict.reason}")
            writer.write(head + payload)
            await writer.drain()
            answer = await read_json_response(reader)
            if answer is None:
                raise HttpsError(f"{base_url}: connection closed before a full response")
            return answer
        finally:
            writer.close()

    try:
        return await asyncio.wait_for(exchange(), timeout)
    except TimeoutError:
        raise HttpsError(f"{base_url}{path}: no answer within {timeout:g}s") from None
    except ssl.SSLError as exc:
        raise HttpsError(f"{base_url}{path}: TLS: {exc.reason or exc}") from None
    except httptools.HttpParserError as exc:
        raise HttpsError(f"{base_url}{path}: malformed response: {exc}") from None
    except OSError as exc:
        if isinstance(exc, HttpsError):
            raise
        raise HttpsError(f"{base_url}{path}: {exc.strerror or exc}") from None
