"""The proxy's xDS client: one ADS stream to the control plane, state of the world.

Theory of operation. :meth:`XdsClient.run` loops forever over *sessions*. A session
opens a fresh HTTP/2 connection and a ``StreamAggregatedResources`` stream on it
(:mod:`plait.proxy.ads_h2`: the proxy does not load grpcio, docs/internals.md "Memory"),
then:

1. subscribes to SDS, CDS and LDS as wildcards (the trust bundle, then clusters, then
   listeners: make-before-break), the first
   request carrying the ``Node`` (id + metadata as a Struct, docs/xds.md);
2. subscribes to EDS and RDS by the names the current config needs
   (:func:`~plait.proxy.xds_decode.eds_names`, :func:`~plait.proxy.xds_decode.rds_names`)
   — on a reconnect that is the config kept from before — each with the version last
   ACKed, so an unchanged type need not be re-sent;
3. for each response: :func:`~plait.proxy.xds_decode.apply_response` builds the next
   config; ``on_config`` gets it, then the response is ACKed (its version and nonce). If a
   resource is outside the supported subset (or ``on_config`` raises), the response is
   NACKed instead — the version last ACKed for the type, the nonce, and ``error_detail``
   ``google.rpc.Status(code=INVALID_ARGUMENT, message=<which resource and field>)`` — and
   the config stays as it was;
4. after a CDS or LDS change, re-subscribes EDS/RDS if the names they need changed.

When the stream fails or ends, the config is kept (the data plane keeps serving it), and
the next session starts after an exponential backoff with jitter
(:func:`backoff_delay`); a session that got at least one response resets the backoff.
``connected`` is true while the current stream has delivered a response.

Several control planes (a list of targets): each reconnect goes to the next address,
round-robin, after the same backoff (docs/resilience.md). The SDS subscription of every
stream is sent without a version, so the control plane always answers it: a stream that
works delivers at least one response even when every other type is unchanged (how a proxy
booted from its last-known-good config learns that the control plane is back).
``on_ack`` gets the config and the raw resources (``Any``) of every type after each ACK,
for the last-known-good file (:mod:`plait.proxy.lkg`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from plait import __version__
from plait.proxy.ads_h2 import ADS_METHOD, StreamError, open_stream
from plait.proxy.runtime import ProxyConfig, UnsupportedConfig
from plait.proxy.xds_decode import (
    apply_decoded,
    decode_resources,
    eds_names,
    held_names,
    merge_raw,
    raw_name,
    rds_names,
)
from plait.proxy.xds_schema import base_pb2, discovery_pb2, status_pb2
from plait.xds.types import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    PARTIAL_TYPES,
    ROUTE,
    SECRET,
    SOTW_PARTIAL,
    short_name,
)

log = logging.getLogger("plait.proxy.xds")

INVALID_ARGUMENT = 3  # google.rpc.Code
CONNECT_TIMEOUT = 10.0  # seconds for the TCP connect to the control plane
# subscription order: the trust bundle, clusters, then listeners (docs/mtls.md)
WILDCARD_TYPES = (SECRET, CLUSTER, LISTENER)
_NAMED_TYPES: dict[str, Callable[[ProxyConfig], list[str]]] = {
    ENDPOINT: eds_names,
    ROUTE: rds_names,
}


def backoff_delay(attempt: int, initial: float, maximum: float, rng: random.Random) -> float:
    """Delay before reconnect ``attempt`` (0-based): ``min(maximum, initial * 2**attempt)``,
    jittered uniformly into its upper half so that many proxies do not reconnect in step."""
    base = min(maximum, initial * 2.0 ** min(attempt, 32))
    return base / 2 + rng.uniform(0, base / 2)


def make_node(node_id: str, metadata: dict[str, Any]) -> Any:
    node = base_pb2.Node(id=node_id, user_agent_name="plait", user_agent_version=__version__)
    node.metadata.update(metadata)
    # EDS/RDS responses merge (apply_response): changed-only pushes are fine (docs/xds.md)
    node.client_features.append(SOTW_PARTIAL)
    return node


class XdsClient:
    """ADS client for one proxy; ``on_config`` receives every accepted ProxyConfig.

    ``initial_config`` is a config kept from before (e.g. persisted last ACKed
    resources): it is served until the control plane says otherwise, and its versions
    are sent on the first subscription.
    """

    def __init__(
        self,
        target: str | Sequence[str],
        node_id: str,
        metadata: dict[str, Any],
        on_config: Callable[[ProxyConfig], None],
        *,
        backoff_initial: float = 0.25,
        backoff_max: float = 5.0,
        rng: random.Random | None = None,
        initial_config: ProxyConfig | None = None,
        initial_resources: Mapping[str, Sequence[Any]] | None = None,
        on_ack: Callable[[ProxyConfig, dict[str, list[Any]]], None] | None = None,
    ) -> None:
        self._targets = [target] if isinstance(target, str) else list(target)
        if not self._targets:
            raise ValueError("XdsClient needs at least one control plane address")
        self._target_index = 0
        self._target = self._targets[0]
        self._on_ack = on_ack
        self._resources: dict[str, list[Any]] = {
            t: list(r) for t, r in (initial_resources or {}).items()
        }
        self._held_raw: dict[str, dict[str, Any]] = {}  # PARTIAL_TYPES: name -> raw resource
        self._node = make_node(node_id, metadata)
        self._on_config = on_config
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._rng = rng or random.Random()
        self._config = initial_config or ProxyConfig()
        self._acked: dict[str, str] = dict(self._config.versions)
        self._last_nack: dict[str, str] = {}
        self._last_error: str | None = None
        self._connected = False
        self._stopping = False
        self._wake = asyncio.Event()
        self._call: Any = None
        # per stream:
        self._node_sent = False
        self._nonces: dict[str, str] = {}
        self._subscribed: dict[str, list[str]] = {}
        self._got_response = False

    # -- state ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def target(self) -> str:
        """The control plane address of the current (or next) stream."""
        return self._target

    @property
    def config(self) -> ProxyConfig:
        return self._config

    @property
    def last_error(self) -> str | None:
        """Why the last stream ended (or failed to start); None once a stream works again."""
        return self._last_error

    @property
    def acked(self) -> dict[str, str]:
        """Type URL -> the version last ACKed."""
        return dict(self._acked)

    @property
    def last_nack(self) -> dict[str, str]:
        """Type URL -> the error sent in a NACK, for types whose latest response was NACKed."""
        return dict(self._last_nack)

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self) -> None:
        """Keep a stream to the control plane until :meth:`stop`; never raises for it."""
        attempt = 0
        while not self._stopping:
            self._got_response = False
            try:
                await self._session()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not self._stopping or (task is not None and task.cancelling()):
                    raise
            except StreamError as exc:
                if not self._stopping:  # stop() cancels the stream: not an error
                    self._last_error = f"{exc.code}: {exc.details}"
            except Exception as exc:
                self._last_error = f"{type(exc).__name__}: {exc}"
            if self._stopping:
                break
            attempt = 0 if self._got_response else attempt + 1
            previous = self._target
            self._target_index = (self._target_index + 1) % len(self._targets)
            self._target = self._targets[self._target_index]
            delay = backoff_delay(attempt, self._backoff_initial, self._backoff_max, self._rng)
            log.warning(
                "xDS stream to %s ended (%s); reconnecting to %s in %.2fs",
                previous,
                self._last_error,
                self._target,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def stop(self) -> None:
        """End :meth:`run`: close the stream and do not reconnect."""
        self._stopping = True
        self._wake.set()
        if self._call is not None:
            self._call.cancel()

    # -- one stream ----------------------------------------------------------------------

    async def _session(self) -> None:
        call = await open_stream(self._target, ADS_METHOD, connect_timeout=CONNECT_TIMEOUT)
        try:
            self._call = call
            if self._stopping:  # stop() came while connecting
                return
            self._node_sent = False
            self._nonces = {}
            self._subscribed = {}
            for type_url in WILDCARD_TYPES:
                await self._send(call, type_url)
            await self._resubscribe(call)
            while True:
                data = await call.read()
                if data is None:
                    raise ConnectionError("the control plane closed the stream")
                response = discovery_pb2.DiscoveryResponse.FromString(data)
                self._got_response = True
                self._connected = True
                self._last_error = None
                await self._handle(call, response)
        finally:
            self._connected = False
            self._call = None
            await call.close()

    async def _handle(self, call: Any, response: Any) -> None:
        type_url = str(response.type_url)
        self._nonces[type_url] = str(response.nonce)
        version = str(response.version_info)
        resources = list(response.resources)
        try:
            decoded = decode_resources(type_url, resources)
            config = apply_decoded(self._config, type_url, decoded, version)
        except UnsupportedConfig as err:
            await self._nack(call, type_url, version, str(err))
            return
        try:
            self._on_config(config)
        except Exception as exc:
            log.exception("applying %s version %s failed", short_name(type_url), version)
            await self._nack(call, type_url, version, f"the proxy could not apply it: {exc}")
            return
        self._config = config
        self._acked[type_url] = version
        self._resources[type_url] = self._raw_after(type_url, config, list(decoded), resources)
        self._last_nack.pop(type_url, None)
        log.info("%s version %s accepted", short_name(type_url), version)
        await self._send(call, type_url)
        if self._on_ack is not None:
            try:
                self._on_ack(config, dict(self._resources))
            except Exception:
                log.exception("on_ack failed for %s version %s", short_name(type_url), version)
        await self._resubscribe(call)

    def _raw_after(
        self, type_url: str, config: ProxyConfig, names: list[str], resources: list[Any]
    ) -> list[Any]:
        """The raw resources of ``type_url`` held once a response was accepted, for the
        last-known-good file: the response's, merged into the held ones for EDS/RDS."""
        if type_url not in PARTIAL_TYPES:
            return resources
        held = self._held_raw.get(type_url)
        if held is None:  # the first merge: name those kept from before (the LKG file's)
            held = {raw_name(type_url, r): r for r in self._resources.get(type_url, ())}
        held = merge_raw(held, names, resources, held_names(config, type_url))
        self._held_raw[type_url] = held
        return list(held.values())

    async def _nack(self, call: Any, type_url: str, version: str, error: str) -> None:
        log.warning("%s version %s refused: %s", short_name(type_url), version, error)
        self._last_nack[type_url] = error
        await self._send(call, type_url, error=error)

    async def _resubscribe(self, call: Any) -> None:
        """Ask for the EDS/RDS names the config needs, if they differ from what was asked."""
        for type_url, names_of in _NAMED_TYPES.items():
            names = names_of(self._config)
            previous = self._subscribed.get(type_url)
            if names != previous and (previous is not None or names):
                await self._send(call, type_url)

    async def _send(self, call: Any, type_url: str, *, error: str | None = None) -> None:
        names_of = _NAMED_TYPES.get(type_url)
        names = names_of(self._config) if names_of is not None else []
        version = self._acked.get(type_url, "")
        if type_url == SECRET and type_url not in self._nonces:
            version = ""  # the stream's first SDS request: always answered (see above)
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            version_info=version,
            resource_names=names,
            response_nonce=self._nonces.get(type_url, ""),
        )
        if not self._node_sent:
            request.node.CopyFrom(self._node)
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=INVALID_ARGUMENT, message=error))
        await call.write(request.SerializeToString())
        self._node_sent = True
        if names_of is not None:
            self._subscribed[type_url] = names
