"""The downstream HTTP/1.1 engine: one asyncio Protocol per client connection.

Theory of operation. :class:`Http1Server` owns a client connection. httptools (llhttp)
parses requests; when a head is complete,
:func:`~plait.proxy.http1_checks.parse_request_head` validates and normalizes it --
anything ambiguous is answered 400 and the connection closed, never forwarded -- and an
:class:`~plait.proxy.http1_exchange.Exchange` is queued for it. Exchanges run one at a
time, in order: a pipelined request waits, with reading paused, so responses cannot
interleave. Body pieces and trailers go to the exchange whose request is being read.

Reading is paused for several independent reasons at once (a bit set, ``P_*`` in
:mod:`~plait.proxy.http1_exchange`): the upstream socket is full, body bytes are waiting
for a connection, a pipelined request waits its turn, an upgrade waits for its answer.
Writing back-pressure goes the other way: when this socket's buffer is full, the current
exchange stops reading from its upstream.

Connection endings: a response that leaves request bytes unread closes with a lingering
close (FIN, then read and drop for up to :data:`LINGER` s) so the client still gets the
answer; a clean keep-alive connection idle for ``downstream_idle_timeout`` is closed and
a request head not complete within ``request_head_timeout`` gets 408 (both checked by
:meth:`Http1Server.sweep`, driven by the DataPlane, so requests pay nothing for them).
``Upgrade`` requests become a raw byte tunnel on 101, half-closes passed through.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from plait.proxy.http1_attempt import P_QUEUE, P_UPGRADE
from plait.proxy.http1_checks import (
    MAX_HEAD_BYTES,
    HeadRejected,
    RequestHead,
    identify_rejected,
)
from plait.proxy.http1_exchange import Exchange, HeaderView
from plait.proxy.http1_shapes import fast_request_head
from plait.proxy.http1_whole import hits as _whole_hits
from plait.proxy.http1_whole import remember_request, template_of
from plait.proxy.http1_whole import requests as _whole_requests
from plait.proxy.proxy_status import PROXY_INTERNAL_ERROR
from plait.proxy.write_behind import HeldWrites

if TYPE_CHECKING:
    from plait.proxy.dataplane import DataPlane, ListenerSlot

__all__ = ["LINGER", "Exchange", "HeaderView", "Http1Server"]

log = logging.getLogger("plait.proxy.http1")

LINGER = 2.0  # seconds to read and drop an unread request body after answering it


class _Closed:
    """What a closed connection's parser reports to (nothing is fed to it)."""


_CLOSED_PARSER = HttpRequestParser(_Closed())


class Http1Server(asyncio.Protocol):
    """One downstream connection."""

    peer: str | None = None  # the caller's SPIFFE id once an mTLS handshake checked it
    # The transport's write and writelines, bound at connection_made: the response path
    # calls them without looking the method up on the transport per write.
    send: Callable[[bytes], object]
    send_all: Callable[[Iterable[bytes]], object]

    def __init__(self, dp: DataPlane, listener: ListenerSlot) -> None:
        self.dp = dp
        self.listener = listener
        self.transport: Any = None
        self.parser = HttpRequestParser(self)
        self.queue: deque[Exchange] = deque()
        # its append and popleft, bound once: every request is queued and dequeued
        self._queue_append = self.queue.append
        self._queue_popleft = self.queue.popleft
        self.current: Exchange | None = None  # the exchange whose request is being read
        self.upgrading: Exchange | None = None
        self.tunnel: Any = None  # upstream transport once a 101 switched protocols
        self.write_paused = False
        self.feeding = False  # inside parser.feed_data: upstream writes are held
        self.closing = False
        self._paused = 0
        self._eof = False
        self._draining = False
        self._tunnel_eofs = 0
        self._linger: asyncio.TimerHandle | None = None
        self._seen_messages = -1  # for sweep(): activity since the last sweep
        self._seen_at = 0.0
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._in_head = False
        self._head_pending = False  # a head is being read or checked: no Exchange yet
        self._head_bytes = 0
        self._stall = 0
        self._messages = 0

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        behind = self.dp.write_behind
        # On a running proxy the writes to the client wait for the loop iteration's end
        # (plait.proxy.write_behind); a DataPlane never bound (tests' rigs) writes at once.
        self.transport = transport if behind is None else HeldWrites(transport, behind)
        self.send = self.transport.write
        self.send_all = self.transport.writelines
        self.dp.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if self.upgrading is not None:
            self.upgrading.early_data(data)
            return
        if self.closing:
            return
        was_in_head = self._in_head
        current = self.current
        boundary = not was_in_head and (current is None or current.request_done)
        if boundary:  # llhttp waits for a message's first byte: this read may be a whole one
            head = _whole_requests.get(data)
            if head is not None:
                self._whole(head, head)
                return
            found = template_of(data)  # a new head per request, from one template
            if found is not None:
                self._whole(found[1], found[0])
                return
        messages = self._messages
        self.feeding = True
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as upgrade:  # a name apart (plait.proxy.native)
            self._fed()
            self._upgrade_requested(data[upgrade.args[0] :])
            return
        except HttpParserError as exc:
            self.feeding = False
            self._parse_failed(exc)  # the failed request's held bytes are dropped
            self._fed()
            return
        self.feeding = False  # _fed(), inlined: the read is parsed, send what it held
        queue = self.queue
        if queue:
            ex = queue[0]
            if ex.up_cork is not None:
                ex.flush_up()
        if boundary and messages + 1 == self._messages and not self._in_head:
            self._remember_whole(data)
        elif self._in_head and was_in_head and messages == self._messages:
            # A whole segment inside one unfinished head: bound what llhttp accumulates.
            self._stall += len(data)
            if self._stall > MAX_HEAD_BYTES:
                self.reject(HeadRejected("request header section is larger than 64 KiB", 431))

    def _whole(self, head: RequestHead, memo: object) -> None:
        """A read that is a request llhttp parsed and the checks accepted before
        (:mod:`~plait.proxy.http1_whole`): what its callbacks would do, without them.
        ``memo``: what remembered it (the head itself, or its template), under which the
        exchange keeps its routing (:meth:`~plait.proxy.http1_dispatch.Dispatch.start`)."""
        _whole_hits[0] += 1
        self._messages += 1  # on_message_begin
        self._stall = 0
        try:
            # on_headers_complete. Nothing later in this read can turn out malformed, so
            # what goes upstream is not held back to the read's end (send_up's cork).
            ex = Exchange(self, head)
            self.current = ex
            self._queue_append(ex)
            if len(self.queue) == 1:
                ex.start(memo)
            else:
                self.pause(P_QUEUE)
            ex.request_complete()  # on_message_complete
        except Exception as exc:  # as a callback's exception inside feed_data
            self._callback_failed(exc)

    def _remember_whole(self, data: bytes) -> None:
        """The read held exactly one request and nothing more: remember it
        (:func:`~plait.proxy.http1_whole.remember_request`) if it was accepted whole."""
        ex = self.current
        if ex is not None and ex.head is not None and ex.request_done:
            remember_request(data, ex.head)

    def _fed(self) -> None:
        """A read is parsed: let the exchange in flight send what it held upstream."""
        self.feeding = False
        queue = self.queue
        if queue:
            ex = queue[0]
            if ex.up_cork is not None:
                ex.flush_up()

    def eof_received(self) -> bool | None:
        if self.tunnel is not None:
            self.tunnel_eof(upstream=False)
            return True
        self._eof = True
        current = self.current
        if self.queue and (current is None or current.request_done or current.done):
            return True  # the request is complete: answer it, then close
        return None  # nothing to answer, or a truncated request: close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.dp.connections.discard(self)
        # The parser holds this protocol: drop the cycle so that reference counting frees
        # both now, not a rare full collection (see UpstreamConnection.connection_lost).
        self.parser = _CLOSED_PARSER
        self.current = self.upgrading = None  # each holds this connection (Exchange.server)
        if self._linger is not None:
            self._linger.cancel()
        tunnel = self.tunnel
        if tunnel is not None:
            self.tunnel = None
            tunnel.close()
        queue = list(self.queue)
        self.queue.clear()
        for ex in queue:
            ex.downstream_lost()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.tunnel is not None:
            self.tunnel.pause_reading()
        elif self.queue:
            self.queue[0].downstream_write_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.tunnel is not None:
            self.tunnel.resume_reading()
        elif self.queue:
            self.queue[0].downstream_write_resumed()

    # -- reading control -----------------------------------------------------------------

    def pause(self, reason: int) -> None:
        if not self._paused and not self.closing:
            self.transport.pause_reading()
        self._paused |= reason

    def resume(self, reason: int) -> None:
        if self._paused & reason:
            self._paused &= ~reason
            if not self._paused and not self.closing:
                self.transport.resume_reading()

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.transport.close()

    def linger_close(self) -> None:
        """Close after answering a request whose body was not read: send FIN, then read
        and drop what the client still sends for a while, so that closing with unread
        data (an RST) cannot destroy the answer before the client reads it."""
        self.closing = True
        transport = self.transport
        if transport.is_closing() or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._paused = 0
        transport.resume_reading()
        self._linger = self.dp.loop.call_later(LINGER, transport.close)

    def drain(self) -> None:
        """Graceful shutdown: finish what is in flight, then close."""
        self._draining = True
        if not self.queue and self.tunnel is None:
            self.close()
        for ex in self.queue:
            ex.close_after = True

    def sweep(self, now: float, idle_timeout: float, head_timeout: float) -> None:
        """Called every few seconds (DataPlane): close idle keep-alive connections, and
        answer 408 to a head that is not complete in time (slowloris). Activity is seen
        as a change in the message count between sweeps, so requests pay nothing."""
        if self.closing or self.tunnel is not None:
            return
        messages = self._messages
        if messages != self._seen_messages or self.queue:
            self._seen_messages = messages
            self._seen_at = now
            return
        waited = now - self._seen_at
        if self._in_head:
            if waited > head_timeout:
                details = f"the request head did not arrive within {head_timeout:g}s"
                self.reject(HeadRejected(details, 408))
        elif waited > idle_timeout:
            self.close()

    def tunnel_eof(self, upstream: bool) -> None:
        """One side of a tunnel half-closed: pass it on; close when both have."""
        self._tunnel_eofs += 1
        peer = self.transport if upstream else self.tunnel
        if self._tunnel_eofs >= 2 or peer is None:
            if self.tunnel is not None:
                self.tunnel.close()
            self.close()
        elif peer.can_write_eof():
            peer.write_eof()

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.closing:  # answered and closing: parse nothing more
            raise HeadRejected("connection is closing")
        self._in_head = True
        self._head_pending = True
        self._messages += 1
        self._url = b""
        self._headers = []
        self._head_bytes = 0
        self._stall = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:  # a trailer field of a chunked request
            if self.current is not None:
                self.current.request_trailer(name, value)
            return
        self._headers.append((name, value))
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_HEAD_BYTES:
            raise HeadRejected("request header section is larger than 64 KiB", 431)

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self.parser
        head = fast_request_head(
            parser.get_method(),
            self._url,
            parser.get_http_version(),
            self._headers,
            parser.should_keep_alive(),
        )
        self._head_pending = False
        ex = Exchange(self, head)
        self.current = ex
        self._queue_append(ex)
        if len(self.queue) == 1:
            ex.start()
        else:
            self.pause(P_QUEUE)

    def on_body(self, body: bytes) -> None:
        ex = self.current
        if ex is not None:
            ex.request_body(body)

    def on_message_complete(self) -> None:
        ex = self.current
        if ex is not None:
            ex.request_complete()

    # -- errors and endings --------------------------------------------------------------

    def _upgrade_requested(self, rest: bytes) -> None:
        ex = self.current
        if ex is None or ex.done:
            self.close()
            return
        self.upgrading = ex
        self.pause(P_UPGRADE)
        if ex.head is None or ex.head.upgrade is None:
            ex.close_after = True  # an upgrade we do not forward (h2c): answer, then close
        if rest:
            ex.early_data(rest)

    def _parse_failed(self, exc: HttpParserError) -> None:
        if self.closing:
            return
        cause = exc.__context__
        if cause is not None:
            self._callback_failed(cause)
            return
        ex = self.current
        if not self._in_head and ex is not None and not ex.request_done:
            ex.request_failed(f"malformed request body: {exc}")
            return
        self.reject(HeadRejected(f"malformed request: {exc}"))

    def _callback_failed(self, cause: BaseException) -> None:
        """A parser callback raised: a rejected head is answered; anything else is a bug
        here, answered 500."""
        if self.closing:
            return
        if isinstance(cause, HeadRejected):
            self.reject(cause)
            return
        log.error("error handling a request", exc_info=cause)
        self.reject(HeadRejected("internal error", 500, PROXY_INTERNAL_ERROR))

    def reject(self, err: HeadRejected) -> None:
        """Answer ``err`` (after responses already owed) and close; stop parsing."""
        self.closing = True  # no more parsing; the transport closes after the answer
        if self._head_pending:  # keep the rejected request's identity (sane parts only)
            self._head_pending = False
            self._identify(err)
        ex = Exchange(self, None, err)
        if err.request_id is not None:
            ex.request_id, ex.new_request_id = err.request_id, None
        self._queue_append(ex)
        if len(self.queue) == 1:
            ex.start()

    def _identify(self, err: HeadRejected) -> None:
        try:
            method = self.parser.get_method() if self._url else None
        except Exception:  # the request line itself did not parse
            method = None
        identify_rejected(err, method, self._url, self._headers)
        snap = self.dp.snapshot
        router = snap.routers.get(self.listener.name) if snap is not None else None
        if err.host is not None and router is not None:
            vhost = router.virtual_host(err.host)
            if vhost is not None and "*" not in vhost.domains:
                err.destination = vhost.name  # a service name: bounded, like routed ones

    def exchange_finished(self, ex: Exchange) -> None:
        queue = self.queue
        if queue and queue[0] is ex:
            self._queue_popleft()
        if self.tunnel is not None:
            return
        if self.upgrading is ex:
            self.upgrading = None
        if ex.close_after or self._draining or (self._eof and not queue):
            if not ex.request_done and not self._eof:
                self.linger_close()
            else:
                self.closing = True
                self.transport.close()
            return
        if self.closing and not queue:
            self.transport.close()
            return
        if len(queue) <= 1 and self._paused & P_QUEUE:
            self.resume(P_QUEUE)
        if queue:
            queue[0].start()
