"""`plait control`: the process. Wires store, registry, cache, ADS server and HTTP API.

Start-up order: open the store, reload config and leases (leases get a fresh ttl), open
or create the service CA (``<data-dir>/ca/``; with an etcd store ``<prefix>/ca/`` in etcd,
shared by every replica; or an existing PKI from ``--ca-root``, ``--ca-cert``,
``--ca-key``), start the gRPC ADS server, the HTTP API and the CA's HTTPS
listener, then write the ready file (docs/internals.md) with the ports actually bound. A
background task sweeps expired leases every ``lease_sweep_interval`` seconds and takes
the CA's periodic step (rotation, the listener's own certificate). Runs until cancelled
(SIGTERM/SIGINT in :func:`main`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import ssl
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from plait.ca.audit import AuditLog
from plait.ca.authority import CaError, CertificateAuthority
from plait.ca.pki_files import STATE_FILE, key_pem
from plait.ca.profile import DEFAULT_LEAF_LIFETIME, new_key, renew_at
from plait.ca.spiffe import CONTROL_SERVICE
from plait.control.ads import add_to_server
from plait.control.api import CaTlsApi, ControlApi
from plait.control.ca_etcd import EtcdCa
from plait.control.ca_plane import CaPlane, CaSetup
from plait.control.etcd import EtcdError, parse_endpoints
from plait.control.guard import GuardSettings
from plait.control.plane import ControlPlane
from plait.control.store import Store
from plait.control.store_etcd import EtcdStore, parse_store_url
from plait.fsutil import write_json_atomic
from plait.jsonhttp import serve_json, server_port
from plait.model.resources import parse_duration

log = logging.getLogger("plait.control")

DEFAULT_DATA_DIR = "./.plait/control"
DEFAULT_XDS_PORT = 18000
DEFAULT_API_PORT = 18001
DEFAULT_TRUST_DOMAIN = "plait.local"
CA_DIR = "ca"
AUDIT_FILE = "audit.jsonl"
MAX_CERT_TTL = timedelta(days=90)
DEFAULT_SYNC_TIMEOUT = 10.0  # the default proxy lease ttl (docs/resilience.md)

# Client pings closer together than this on a stream without data are strikes; grpc-core
# sends GOAWAY ``too_many_pings`` after the third. Proxies ping every 30 s
# (plait.proxy.ads_h2), Envoy every ``connection_keepalive.interval`` it is configured
# with; grpc-core's default, 5 minutes, closed every idle proxy's stream after 2 minutes.
MIN_CLIENT_PING_INTERVAL_MS = 5_000


def grpc_options(
    min_client_ping_interval_ms: int = MIN_CLIENT_PING_INTERVAL_MS,
) -> list[tuple[str, int]]:
    """The xDS gRPC server's channel arguments (grpc-core names, grpc/impl/channel_arg_names.h)."""
    return [
        ("grpc.so_reuseport", 0),  # a second control plane on the same port must fail to bind
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS
        ("grpc.http2.min_ping_interval_without_data_ms", min_client_ping_interval_ms),
        ("grpc.http2.max_pings_without_data", 0),
    ]


GRPC_OPTIONS = grpc_options()


def _reachable(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


async def _sweep_leases(
    plane: ControlPlane, interval: float, ca_tick: Callable[[], None] | None = None
) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            plane.sweep()
        except Exception:
            log.exception("lease sweep failed")
        if ca_tick is not None:
            try:
                ca_tick()
            except Exception:
                log.exception("CA periodic step failed")


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise CaError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def open_ca(
    data_dir: str,
    trust_domain: str | None = None,
    ca_root: str | None = None,
    ca_cert: str | None = None,
    ca_key: str | None = None,
    cert_ttl: timedelta = DEFAULT_LEAF_LIFETIME,
    shared: EtcdCa | None = None,
) -> CaSetup:
    """The CA: an existing PKI from files, else ``<data-dir>/ca/`` (created the first
    time), or with ``shared`` the CA in etcd (created by the first replica; see
    :mod:`plait.control.ca_etcd`). Raises CaError with what to do."""
    ca_dir = os.path.join(data_dir, CA_DIR)
    os.makedirs(ca_dir, mode=0o700, exist_ok=True)
    os.chmod(ca_dir, 0o700)
    audit = AuditLog(os.path.join(ca_dir, AUDIT_FILE))
    now = datetime.now(UTC)
    files = (ca_root, ca_cert, ca_key)
    if any(files):
        if not all(files):
            raise CaError("--ca-root, --ca-cert and --ca-key go together: give all three")
        assert ca_root and ca_cert and ca_key
        ca = CertificateAuthority.from_pem(
            trust_domain or DEFAULT_TRUST_DOMAIN,
            _read(ca_root, "the root certificate"),
            _read(ca_cert, "the intermediate certificate"),
            _read(ca_key, "the intermediate key"),
            now,
            secrets.token_bytes,
        )
        log.info("CA: existing PKI from %s (issuer %s)", ca_cert, ca.issuer.issuer_name)
        return CaSetup(ca, audit, None, cert_ttl)
    if shared is not None:
        return _open_shared_ca(shared, ca_dir, audit, now, trust_domain, cert_ttl)
    if os.path.exists(os.path.join(ca_dir, STATE_FILE)):
        ca = CertificateAuthority.load(ca_dir, now, secrets.token_bytes)
        if trust_domain and trust_domain != ca.trust_domain:
            raise CaError(
                f"the CA in {ca_dir} is for trust domain {ca.trust_domain!r}, not "
                f"{trust_domain!r}: pass --trust-domain {ca.trust_domain} or use a new --data-dir"
            )
        log.info("CA: loaded %s (%s, %s)", ca_dir, ca.trust_domain, ca.rotation)
    else:
        ca = CertificateAuthority.create(
            trust_domain or DEFAULT_TRUST_DOMAIN, now, secrets.token_bytes
        )
        ca.save(ca_dir)
        log.info("CA: created a new root for %s in %s", ca.trust_domain, ca_dir)
    return CaSetup(ca, audit, ca_dir, cert_ttl)


def _open_shared_ca(
    shared: EtcdCa,
    ca_dir: str,
    audit: AuditLog,
    now: datetime,
    trust_domain: str | None,
    cert_ttl: timedelta,
) -> CaSetup:
    """The CA in etcd; if there is none yet, write this replica's: the CA of
    ``<data-dir>/ca/`` if there is one (moving a single control plane to etcd keeps its
    CA), else a new one. Of replicas racing to write it, all end up with the winner's."""
    rng = secrets.token_bytes
    ca = shared.load(now, rng)
    if ca is not None:
        log.info("CA: loaded from %s (%s, %s)", shared.where, ca.trust_domain, ca.rotation)
    else:
        if os.path.exists(os.path.join(ca_dir, STATE_FILE)):
            mine = CertificateAuthority.load(ca_dir, now, rng)
            origin = f"the CA of {ca_dir}"
        else:
            mine = CertificateAuthority.create(trust_domain or DEFAULT_TRUST_DOMAIN, now, rng)
            origin = "a new root"
        ca, created = shared.create(mine, now, rng)
        if created:
            log.info("CA: wrote %s for %s to %s", origin, ca.trust_domain, shared.where)
        else:
            log.info("CA: another replica created it first; loaded from %s", shared.where)
    if trust_domain and trust_domain != ca.trust_domain:
        raise CaError(
            f"the CA in {shared.where} is for trust domain {ca.trust_domain!r}, not "
            f"{trust_domain!r}: pass --trust-domain {ca.trust_domain} or use another prefix"
        )
    return CaSetup(ca, audit, None, cert_ttl, shared=shared)


class ControlTls:
    """The HTTPS listener's TLS context. Its certificate is for
    ``spiffe://<td>/svc/plait-control``, issued by our own CA to a fresh key that lives
    only in memory (it passes through a 0600 temp file that is deleted at once, because
    ``ssl`` loads keys from files); it is renewed at half-life and when the issuer
    changes. Client certificates (renewals) are optional and verified against every root
    the bundle has held; the CA then checks the root is still in the bundle."""

    def __init__(self, ca: CaPlane, workdir: str) -> None:
        self.ca = ca
        self.workdir = workdir
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.verify_mode = ssl.CERT_OPTIONAL
        self._trusted: set[bytes] = set()
        self._renew_at: datetime | None = None
        self._generation: int | None = None
        self.refresh()

    def refresh(self) -> None:
        """Trust new roots; renew the listener's certificate if it is due."""
        for root in x509.load_pem_x509_certificates(self.ca.ca.trust_bundle()):
            fingerprint = root.fingerprint(hashes.SHA256())
            if fingerprint not in self._trusted:
                pem = root.public_bytes(serialization.Encoding.PEM).decode("ascii")
                self.context.load_verify_locations(cadata=pem)
                self._trusted.add(fingerprint)
        due = self._renew_at is None or self.ca.utcnow() >= self._renew_at
        if due or self._generation != self.ca.ca.issuer.id:
            self._reissue()

    def _reissue(self) -> None:
        key = new_key()
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, CONTROL_SERVICE)])
        csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
        issued_at = self.ca.utcnow()
        issued = self.ca.issue_control_cert(csr.public_bytes(serialization.Encoding.PEM))
        fd, path = tempfile.mkstemp(prefix=".control-tls-", dir=self.workdir)  # mode 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(issued.chain_pem + key_pem(key))
            self.context.load_cert_chain(path)
        finally:
            os.unlink(path)
        # half of the lifetime from now: the notBefore backdating (clock skew) aside
        self._renew_at = renew_at(issued_at, issued.not_after)
        self._generation = issued.generation
        log.info("CA listener certificate %s until %s", issued.spiffe_id, issued.not_after)


async def run_control(
    data_dir: str,
    xds_host: str = "127.0.0.1",
    xds_port: int = 0,
    api_host: str = "127.0.0.1",
    api_port: int = 0,
    ready_file: str | None = None,
    lease_sweep_interval: float = 1.0,
    trust_domain: str | None = None,
    ca_root: str | None = None,
    ca_cert: str | None = None,
    ca_key: str | None = None,
    cert_ttl: timedelta = DEFAULT_LEAF_LIFETIME,
    ca_port: int = 0,
    store_url: str | None = None,
    guard: GuardSettings | None = None,
    sync_timeout: float = DEFAULT_SYNC_TIMEOUT,
) -> None:
    """Run the control plane until cancelled."""
    store: Store | EtcdStore
    if store_url:  # HA: replicas share config and leases in etcd (docs/resilience.md)
        endpoints, prefix = parse_store_url(store_url)
        store = EtcdStore(endpoints, prefix)
    else:
        store = Store(data_dir)
    try:
        shared = EtcdCa(store.client, store.keys.prefix) if isinstance(store, EtcdStore) else None
        ca_setup = open_ca(data_dir, trust_domain, ca_root, ca_cert, ca_key, cert_ttl, shared)
    except BaseException:
        store.close()
        raise
    plane = ControlPlane(
        store,  # type: ignore[arg-type]
        ca=ca_setup,
        guard=guard,
        sync_timeout=sync_timeout,
    )
    if isinstance(store, EtcdStore):
        loop = asyncio.get_running_loop()
        store.start_watch(
            lambda config, puts, gone: loop.call_soon_threadsafe(
                plane.store_changed, config, puts, gone
            )
        )
    assert plane.ca is not None
    version, _ = store.current()
    log.info(
        "store %s: config version %d, %d lease(s) reloaded",
        store.path,
        version,
        len(plane.registry.node_ids()),
    )
    grpc_server = grpc.aio.server(options=GRPC_OPTIONS)
    add_to_server(grpc_server, plane.cache)
    api_server: asyncio.Server | None = None
    ca_server: asyncio.Server | None = None
    sweeper: asyncio.Task[None] | None = None
    try:
        bound_xds = grpc_server.add_insecure_port(f"{xds_host}:{xds_port}")
        if not bound_xds:
            raise OSError(f"could not bind the xDS port {xds_host}:{xds_port}")
        await grpc_server.start()
        api = ControlApi(plane)
        api_server = await serve_json(api.handle, api_host, api_port)
        bound_api = server_port(api_server)
        tls = ControlTls(plane.ca, os.path.join(data_dir, CA_DIR))
        tls_api = CaTlsApi(plane)
        ca_server = await serve_json(tls_api.handle, api_host, ca_port, ssl=tls.context)
        xds_addr = f"{_reachable(xds_host)}:{bound_xds}"
        api_url = f"http://{_reachable(api_host)}:{bound_api}"
        ca_url = f"https://{_reachable(api_host)}:{server_port(ca_server)}"
        api.ca_url = tls_api.ca_url = ca_url
        log.info("serving xDS (ADS) on %s, HTTP API on %s, CA on %s", xds_addr, api_url, ca_url)
        if ready_file:
            ready = {"pid": os.getpid(), "xds": xds_addr, "api": api_url, "ca": ca_url}
            write_json_atomic(ready_file, ready, 0o600, make_parents=True, newline=True)
        ca_plane = plane.ca

        def ca_tick() -> None:
            ca_plane.tick()
            plane.bundle_changed()  # a rotation step changed the bundle: push it over SDS
            tls.refresh()

        def ca_changed(revision: int | None) -> None:  # another replica changed the shared CA
            try:
                if ca_plane.refresh_shared(revision):
                    plane.bundle_changed()
                    tls.refresh()
            except Exception:
                log.exception("could not reload the shared CA from etcd")

        if isinstance(store, EtcdStore) and ca_setup.shared is not None:
            running = asyncio.get_running_loop()

            def on_ca_change(revision: int) -> None:  # from the watch thread
                running.call_soon_threadsafe(ca_changed, revision)

            store.on_ca_change = on_ca_change
            ca_changed(None)  # a change between open_ca and now

        sweeper = asyncio.create_task(_sweep_leases(plane, lease_sweep_interval, ca_tick))
        await asyncio.Event().wait()
    finally:
        if sweeper is not None:
            sweeper.cancel()
        if api_server is not None:
            api_server.close()
        if ca_server is not None:
            ca_server.close()
        await grpc_server.stop(grace=0.5)
        await plane.close()  # the push (recompute) task, if one is running
        store.close()
        log.info("control plane stopped")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="plait control", description="Run the plait control plane (xDS server + HTTP API)."
    )
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="where plait.db lives")
    p.add_argument(
        "--store",
        default=None,
        help="etcd://HOST:PORT[,HOST:PORT...][/PREFIX]: keep config and leases in etcd so "
        "several replicas serve one config (default: SQLite in --data-dir)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind both servers on")
    p.add_argument("--xds-port", type=int, default=DEFAULT_XDS_PORT, help="gRPC ADS port (0=any)")
    p.add_argument("--api-port", type=int, default=DEFAULT_API_PORT, help="HTTP API port (0=any)")
    p.add_argument("--ready-file", default=None, help="write bound ports here once serving")
    p.add_argument(
        "--trust-domain", default=None, help=f"SPIFFE trust domain (default {DEFAULT_TRUST_DOMAIN})"
    )
    p.add_argument("--ca-root", default=None, help="existing PKI: root certificate (PEM)")
    p.add_argument("--ca-cert", default=None, help="existing PKI: intermediate certificate")
    p.add_argument("--ca-key", default=None, help="existing PKI: the intermediate's key")
    p.add_argument("--cert-ttl", default="24h", help="lifetime of issued certificates")
    p.add_argument("--ca-port", type=int, default=0, help="HTTPS port for CSRs (0=any)")
    p.add_argument("--lease-sweep-interval", type=float, default=1.0, help=argparse.SUPPRESS)
    guard = p.add_argument_group("push guard (docs/resilience.md)")
    guard.add_argument(
        "--guard-max-endpoint-loss",
        type=float,
        default=0.5,
        help="hold a change that removes more than this fraction of a service's healthy "
        "endpoints within the window (default 0.5)",
    )
    guard.add_argument(
        "--guard-max-registry-loss",
        type=float,
        default=0.3,
        help="hold a change that removes more than this fraction of all healthy endpoints "
        "within the window (default 0.3)",
    )
    guard.add_argument("--guard-window", default="60s", help="loss accounting window (60s)")
    guard.add_argument("--no-guard", action="store_true", help="push every registry change")
    p.add_argument(
        "--sync-timeout",
        default=f"{DEFAULT_SYNC_TIMEOUT:g}s",
        help="after a start, serve no xDS until every reloaded node has heartbeated or this "
        "long has passed (default 10s; 0 = serve at once)",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but optional here
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        cert_ttl = timedelta(seconds=parse_duration(args.cert_ttl))
    except ValueError as exc:
        parser.error(f"--cert-ttl: {exc}")
    if args.store:
        try:
            parse_endpoints(parse_store_url(args.store)[0])
        except ValueError as exc:
            parser.error(f"--store: {exc}")
    if cert_ttl > MAX_CERT_TTL:
        parser.error(f"--cert-ttl: at most {MAX_CERT_TTL.days} days; short-lived is the point")
    try:
        guard = GuardSettings(
            max_endpoint_loss=args.guard_max_endpoint_loss,
            max_registry_loss=args.guard_max_registry_loss,
            window=parse_duration(args.guard_window),
            enabled=not args.no_guard,
        )
    except ValueError as exc:
        parser.error(f"guard: {exc}")
    try:
        sync_timeout = parse_duration(args.sync_timeout)
    except ValueError as exc:
        parser.error(f"--sync-timeout: {exc}")
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    async def run() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        await run_control(
            args.data_dir,
            xds_host=args.host,
            xds_port=args.xds_port,
            api_host=args.host,
            api_port=args.api_port,
            ready_file=args.ready_file,
            lease_sweep_interval=args.lease_sweep_interval,
            trust_domain=args.trust_domain,
            ca_root=args.ca_root,
            ca_cert=args.ca_cert,
            ca_key=args.ca_key,
            cert_ttl=cert_ttl,
            ca_port=args.ca_port,
            store_url=args.store,
            guard=guard,
            sync_timeout=sync_timeout,
        )

    with asyncio.Runner(loop_factory=_new_event_loop) as runner:
        try:
            runner.run(run())
        except asyncio.CancelledError:
            pass
        except (OSError, CaError, EtcdError) as exc:
            log.error("%s", exc)
            return 1
    return 0
