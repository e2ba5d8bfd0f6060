"""Route matching: (host, path, headers) -> Route, and Route -> cluster name.

Rules (the xDS RouteConfiguration semantics, for the subset plait accepts):

* A :class:`Router` is built once per :class:`RouteTable` and is immutable afterwards
  (but for a bounded memo: Host value as sent -> its virtual host's compiled routes);
  a new table means a new Router. Everything a request needs is compiled here: domain
  lookup tables, per-route match kinds, header matchers as tuples, cumulative weights.
* Virtual host selection, host compared case-insensitively, first hit wins:
  1. the exact host as sent, port included (``orders:8080``);
  2. the host without its port (``orders``); IPv6 literals keep their brackets
     (``[::1]:80`` -> ``[::1]``);
  3. the ``*`` virtual host.
  Partial wildcards (``*.example.com``) are outside plait's xDS subset: the decoder
  refuses them, so a domain here is an exact ``host[:port]`` or ``*``.
* Routes of the virtual host are tried in order; the first whose match holds wins:
  path prefix (``""`` and ``"/"`` match every path), or exact path; the query string is
  never part of the comparison. Then every header matcher must hold.
* Header matchers follow Envoy (``HeaderUtility::matchHeaders``): against a present
  header, ``exact``/``prefix``/``present`` give a result that ``invert`` flips; an
  absent header fails every matcher except a ``present`` one, which then holds when
  ``present`` equals ``invert`` (so ``present: false``, or ``present: true`` inverted).
* Weighted clusters: a cluster is drawn with probability weight/total from the
  injected ``random.Random``; a zero weight is never drawn; a route with one cluster
  (or one non-zero weight) never touches the rng.

``Router.table.by_domain`` is not consulted: the lookup tables are rebuilt here from
``virtual_hosts`` so that the semantics above do not depend on how a decoder filled it.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Mapping

from plait.proxy.runtime import HeaderMatcher, Route, RouteTable, VirtualHost

__all__ = ["Router", "host_of_request", "strip_port"]

# Path match kinds of a compiled route.
_ALL = 0
_PREFIX = 1
_EXACT = 2

# Header matcher kinds.
_H_EXACT = 0
_H_PREFIX = 1
_H_CONST = 2  # present matcher: the result does not depend on the value

# (name, kind, value, flag, result_when_absent); flag is ``invert`` for _H_EXACT and
# _H_PREFIX, and the result for a present header for _H_CONST
_CompiledHeader = tuple[str, int, str, bool, bool]
# (path kind, path value, header matchers, route)
_CompiledRoute = tuple[int, str, tuple[_CompiledHeader, ...], Route]
# (single cluster or None, cumulative weights, cluster names, total, last drawable index)
_Picker = tuple[str | None, tuple[float, ...], tuple[str, ...], float, int]

MAX_HOSTS = 1024  # Host values whose routes a Router remembers; then it starts over
MAX_MEMO_HOST = 256  # longer Host values are not remembered


def strip_port(host: str) -> str:
    """``host`` without a trailing ``:port``; IPv6 literals keep their brackets.

    ``"a:80"`` -> ``"a"``, ``"[::1]:80"`` -> ``"[::1]"``, ``"[::1]"`` and ``"::1"``
    (an unbracketed IPv6 address has no port) are returned unchanged.
    """
    colon = host.rfind(":")
    if colon < 0:
        return host
    if host.startswith("["):
        bracket = host.rfind("]")
        return host[: bracket + 1] if bracket == colon - 1 else host
    if host.find(":") != colon:  # bare IPv6 address, no port
        return host
    return host[:colon]


def host_of_request(host_header: str | None, absolute_url_authority: str | None) -> str | None:
    """The host a request is for (RFC 9112 section 3.2.2).

    The authority of an absolute-form request target wins over the ``Host`` header; user
    info (``user@``) is dropped. ``None`` when neither is present or both are empty.
    """
    if absolute_url_authority:
        at = absolute_url_authority.rfind("@")
        host = absolute_url_authority[at + 1 :] if at >= 0 else absolute_url_authority
        return host or None
    return host_header or None


def _compile_header(matcher: HeaderMatcher) -> _CompiledHeader:
    name = matcher.name.lower()
    if matcher.exact is not None:
        return (name, _H_EXACT, matcher.exact, matcher.invert, False)
    if matcher.prefix is not None:
        return (name, _H_PREFIX, matcher.prefix, matcher.invert, False)
    # A present matcher, or no specifier at all (Envoy: presence).
    present = True if matcher.present is None else matcher.present
    return (name, _H_CONST, "", present != matcher.invert, present == matcher.invert)


def _compile_route(route: Route) -> _CompiledRoute | None:
    """The match of ``route`` as a tuple; ``None`` if it can never match."""
    match = route.match
    headers = tuple(_compile_header(h) for h in match.headers)
    if match.path is not None:
        if "?" in match.path:
            return None  # the query string is never compared, so this cannot match
        return (_EXACT, match.path, headers, route)
    prefix = match.prefix
    if prefix is None or prefix in ("", "/"):
        return (_ALL, "", headers, route)
    if "?" in prefix:
        return None
    return (_PREFIX, prefix, headers, route)


def _compile_picker(route: Route) -> _Picker:
    names: list[str] = []
    cumulative: list[float] = []
    total = 0
    last = -1
    drawable: list[str] = []
    for i, wc in enumerate(route.clusters):
        if wc.weight < 0:
            raise ValueError(
                f"route {route.name!r}: cluster {wc.cluster!r} has a negative weight "
                f"({wc.weight}); weights must be 0 or more"
            )
        total += wc.weight
        names.append(wc.cluster)
        cumulative.append(float(total))
        if wc.weight > 0:
            last = i
            drawable.append(wc.cluster)
    if total <= 0:
        raise ValueError(
            f"route {route.name!r}: the cluster weights add up to 0; "
            "give at least one cluster a positive weight"
        )
    single = drawable[0] if len(drawable) == 1 else None
    return (single, tuple(cumulative), tuple(names), float(total), last)


def _headers_match(matchers: tuple[_CompiledHeader, ...], headers: Mapping[str, str]) -> bool:
    for name, kind, value, flag, when_absent in matchers:
        actual = headers.get(name)
        if actual is None:
            if not when_absent:
                return False
        elif kind == _H_EXACT:
            if (actual == value) == flag:
                return False
        elif kind == _H_PREFIX:
            if actual.startswith(value) == flag:
                return False
        elif not flag:  # _H_CONST
            return False
    return True


class Router:
    """Matches requests against one :class:`RouteTable`. Build once per table."""

    __slots__ = (
        "_by_host",
        "_exact",
        "_pickers",
        "_routes",
        "_wildcard",
        "table",
        "uses_headers",
    )

    def __init__(self, table: RouteTable) -> None:
        self.table = table
        self._routes: dict[int, tuple[_CompiledRoute, ...]] = {}  # id(VirtualHost) ->
        self._pickers: dict[int, _Picker] = {}  # id(Route) ->
        exact: dict[str, VirtualHost] = {}
        wildcard: VirtualHost | None = None
        for vh in table.virtual_hosts:
            self._routes[id(vh)] = tuple(
                compiled for compiled in map(_compile_route, vh.routes) if compiled is not None
            )
            for route in vh.routes:
                self._pickers[id(route)] = _compile_picker(route)
            for raw in vh.domains:
                domain = raw.lower()
                if domain != "*":
                    exact.setdefault(domain, vh)  # the first virtual host wins
                elif wildcard is None:
                    wildcard = vh
        self._exact = exact
        self._wildcard = wildcard
        # Host value as sent (str, or bytes as the request head holds it) -> the compiled
        # routes of its virtual host (() for none): what virtual_host() decides,
        # remembered (bounded: starts over when full)
        self._by_host: dict[str | bytes, tuple[_CompiledRoute, ...]] = {}
        # whether any route matches on headers: if none, callers need not offer them
        self.uses_headers = any(c[2] for routes in self._routes.values() for c in routes)

    def virtual_host(self, host: str) -> VirtualHost | None:
        """The virtual host for ``host`` (a ``Host`` header value), or ``None``."""
        exact = self._exact
        if not exact:  # only "*" (an inbound listener's table): every host is its
            return self._wildcard
        vh = exact.get(host)
        if vh is not None:
            return vh
        host = host.lower()
        vh = exact.get(host)
        if vh is not None:
            return vh
        bare = strip_port(host)
        if bare is not host:
            vh = exact.get(bare)
            if vh is not None:
                return vh
        return self._wildcard

    def _routes_of(self, host: str | bytes) -> tuple[_CompiledRoute, ...]:
        """The compiled routes of ``host``'s virtual host (``()`` for none), remembered."""
        vh = self.virtual_host(host.decode("latin-1") if isinstance(host, bytes) else host)
        routes = self._routes[id(vh)] if vh is not None else ()
        if len(host) <= MAX_MEMO_HOST:
            memo = self._by_host
            if len(memo) >= MAX_HOSTS:
                memo.clear()
            memo[host] = routes
        return routes

    def match(self, host: str | bytes, path: str, headers: Mapping[str, str]) -> Route | None:
        """The first route of the host's virtual host that matches, or ``None``.

        ``host`` is a ``Host`` value (bytes are read as latin-1: pass a request head's
        ``host`` as it is, a repeated one is then the same object, its hash kept);
        ``path`` is the request target in origin form and may carry a query string;
        ``headers`` maps lowercase header names to values.
        """
        routes = self._by_host.get(host)
        if routes is None:
            routes = self._routes_of(host)
        query = -1  # computed on first need
        for kind, value, matchers, route in routes:
            if kind == _PREFIX:
                # A prefix holds no "?", so comparing against the whole target is the
                # same as comparing against the path without its query string.
                if not path.startswith(value):
                    continue
            elif kind == _EXACT:
                if query == -1:
                    query = path.find("?")
                    if query < 0:
                        query = len(path)
                if query != len(value) or not path.startswith(value):
                    continue
            if matchers and not _headers_match(matchers, headers):
                continue
            return route
        return None

    def pick_cluster(self, route: Route, rng: random.Random) -> str:
        """The cluster ``route`` sends this request to (a weighted draw when it splits).

        Pickers are cached by ``id(route)``; the table keeps its routes alive, so a live
        object with a cached id is that route. A route from elsewhere is compiled on the
        spot (correct, but slower).
        """
        picker = self._pickers.get(id(route))
        if picker is None:
            picker = _compile_picker(route)
        single, cumulative, names, total, last = picker
        if single is not None:
            return single
        i = bisect_right(cumulative, rng.random() * total)
        return names[i] if i <= last else names[last]
