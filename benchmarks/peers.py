"""The real peers: the nginx upstream, HAProxy and nginx as proxies, and their certificates.

Config texts are built by pure functions (unit-tested); :class:`PeerSet` writes them,
starts the processes pinned to their CPUs and waits until each answers.

Shape of every proxy case (ports picked free by the harness, 127.0.0.1 only)::

    1 hop:          load -> outbound proxy ----------------------------> upstream nginx
    2 hops:         load -> outbound proxy -> inbound proxy ------------> upstream nginx
    2 hops (mTLS):  load -> outbound proxy =TLS 1.3, mutual=> inbound --> upstream nginx

Production defaults on both proxies, as close to what plait does per request as the
peer allows: routing on ``Host: bench`` (anything else: 404), a request id header, an
access log line per request written to a file (nginx: buffered 64 KiB / 1 s, like
plait's writer; HAProxy: ``log stdout`` into a file), keep-alive both sides, one
worker/thread.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from procs import Proc, Procs, free_port, wait_http_ok

HOST = "127.0.0.1"
SERVICE = "bench"
BODY_SIZE = 1024
# What `make bench` installs when missing: command -> Debian package.
TOOLS = {"haproxy": "haproxy", "nginx": "nginx", "wrk": "wrk", "h2load": "nghttp2-client"}


def ensure_tools(install: bool = True) -> list[str]:
    """Install the Debian packages of missing tools (as root); the commands still missing."""
    missing = [cmd for cmd in TOOLS if shutil.which(cmd) is None]
    if missing and install and os.geteuid() == 0 and shutil.which("apt-get"):
        pkgs = sorted({TOOLS[c] for c in missing})
        print(f"installing {' '.join(pkgs)} (apt-get)", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *pkgs],
            check=False,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        # The Debian packages start system services; the benchmark wants none of them.
        for svc in ("nginx", "haproxy"):
            if TOOLS[svc] in pkgs and shutil.which("systemctl"):
                subprocess.run(
                    ["systemctl", "disable", "--now", svc], check=False, capture_output=True
                )
        missing = [cmd for cmd in TOOLS if shutil.which(cmd) is None]
    return missing


def upstream_body(size: int = BODY_SIZE) -> str:
    """A fixed body of exactly ``size`` bytes (ASCII, ends in a newline)."""
    line = "plait benchmark upstream body, 1 KiB fixed. "
    text = (line * (size // len(line) + 1))[: size - 1] + "\n"
    assert len(text.encode()) == size
    return text


# -- certificates ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_crt: Path
    server_key: Path
    server_pem: Path  # cert + key, for HAProxy
    client_crt: Path
    client_key: Path
    client_pem: Path


def openssl_commands(d: Path, trust_domain: str = "bench.local") -> list[list[str]]:
    """The openssl commands that make a P-256 CA, a server and a client certificate in ``d``."""
    ec = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
    cmds = [
        ["openssl", "genpkey", *ec, "-out", str(d / "ca.key")],
        [
            "openssl",
            "req",
            "-x509",
            "-new",
            "-key",
            str(d / "ca.key"),
            "-sha256",
            "-days",
            "2",
            "-subj",
            "/CN=plait bench CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            str(d / "ca.crt"),
        ],
    ]
    for who, usage, san in (
        ("server", "serverAuth", f"DNS:{SERVICE},URI:spiffe://{trust_domain}/svc/{SERVICE}"),
        ("client", "clientAuth", f"URI:spiffe://{trust_domain}/svc/bench-client"),
    ):
        ext = d / f"{who}.ext"
        ext.write_text(
            f"subjectAltName={san}\nextendedKeyUsage={usage}\n"
            "keyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n"
        )
        cmds += [
            ["openssl", "genpkey", *ec, "-out", str(d / f"{who}.key")],
            [
                "openssl",
                "req",
                "-new",
                "-key",
                str(d / f"{who}.key"),
                "-subj",
                f"/CN={who}",
                "-out",
                str(d / f"{who}.csr"),
            ],
            [
                "openssl",
                "x509",
                "-req",
                "-in",
                str(d / f"{who}.csr"),
                "-CA",
                str(d / "ca.crt"),
                "-CAkey",
                str(d / "ca.key"),
                "-CAcreateserial",
                "-sha256",
                "-days",
                "2",
                "-extfile",
                str(ext),
                "-out",
                str(d / f"{who}.crt"),
            ],
        ]
    return cmds


def make_certs(d: Path) -> Certs:
    d.mkdir(parents=True, exist_ok=True)
    for cmd in openssl_commands(d):
        subprocess.run(cmd, check=True, capture_output=True)
    for who in ("server", "client"):
        (d / f"{who}.pem").write_text(
            (d / f"{who}.crt").read_text() + (d / f"{who}.key").read_text()
        )
    return Certs(
        ca=d / "ca.crt",
        server_crt=d / "server.crt",
        server_key=d / "server.key",
        server_pem=d / "server.pem",
        client_crt=d / "client.crt",
        client_key=d / "client.key",
        client_pem=d / "client.pem",
    )


# -- nginx -------------------------------------------------------------------------------------


def _nginx_main(prefix: Path, run_as_root: bool) -> str:
    return (
        f"{'user root root;' if run_as_root else ''}\n"
        "daemon off;\n"
        "master_process on;\n"
        "worker_processes 1;\n"
        f"pid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log warn;\n"
        "events { worker_connections 4096; multi_accept on; }\n"
    )


def _nginx_http_common(prefix: Path) -> str:
    return (
        f"  client_body_temp_path {prefix}/tmp-body;\n"
        f"  proxy_temp_path {prefix}/tmp-proxy;\n"
        f"  fastcgi_temp_path {prefix}/tmp-fcgi;\n"
        f"  uwsgi_temp_path {prefix}/tmp-uwsgi;\n"
        f"  scgi_temp_path {prefix}/tmp-scgi;\n"
        "  keepalive_requests 10000000;\n"
        "  keepalive_timeout 75s;\n"
        "  server_tokens off;\n"
    )


def nginx_upstream_conf(prefix: Path, port: int, body: str, *, run_as_root: bool = True) -> str:
    """The upstream: every request answered 200 with the fixed body; no access log."""
    escaped = body.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return (
        _nginx_main(prefix, run_as_root)
        + "http {\n"
        + _nginx_http_common(prefix)
        + "  access_log off;\n"
        "  default_type text/plain;\n"
        f"  server {{\n    listen {HOST}:{port} default_server reuseport backlog=4096;\n"
        f'    location / {{ return 200 "{escaped}"; }}\n  }}\n'
        "}\n"
    )


def nginx_proxy_conf(
    prefix: Path,
    listen_port: int,
    target_port: int,
    *,
    listen_tls: Certs | None = None,
    target_tls: Certs | None = None,
    run_as_root: bool = True,
) -> str:
    """nginx as a proxy on ``listen_port`` for ``Host: bench`` -> ``127.0.0.1:target_port``.

    ``listen_tls``: the listener terminates mutual TLS 1.3 (the inbound side);
    ``target_tls``: the proxy speaks mutual TLS 1.3 to its target (the outbound side).
    """
    scheme = "https" if target_tls else "http"
    lines = [
        _nginx_main(prefix, run_as_root),
        "http {",
        _nginx_http_common(prefix).rstrip("\n"),
        '  log_format bench \'$remote_addr [$time_iso8601] "$request" $status '
        "$body_bytes_sent $request_time $upstream_response_time $request_id';",
        f"  access_log {prefix}/access.log bench buffer=64k flush=1s;",
        f"  upstream target {{ server {HOST}:{target_port}; keepalive 128; "
        "keepalive_requests 10000000; }",
        "  server {",
        f"    listen {HOST}:{listen_port} default_server{' ssl' if listen_tls else ''} "
        "backlog=4096;",
        "    location / { return 404; }",
    ]
    if listen_tls:
        lines += _nginx_server_tls(listen_tls)
    lines += [
        "  }",
        "  server {",
        f"    listen {HOST}:{listen_port}{' ssl' if listen_tls else ''};",
        f"    server_name {SERVICE};",
    ]
    if listen_tls:
        lines += _nginx_server_tls(listen_tls)
    lines += [
        "    location / {",
        f"      proxy_pass {scheme}://target;",
        "      proxy_http_version 1.1;",
        '      proxy_set_header Connection "";',
        "      proxy_set_header Host $host;",
        "      proxy_set_header X-Request-Id $request_id;",
        "      proxy_buffering on;",
    ]
    if target_tls:
        lines += [
            f"      proxy_ssl_certificate {target_tls.client_crt};",
            f"      proxy_ssl_certificate_key {target_tls.client_key};",
            f"      proxy_ssl_trusted_certificate {target_tls.ca};",
            "      proxy_ssl_verify on;",
            f"      proxy_ssl_name {SERVICE};",
            "      proxy_ssl_server_name on;",
            "      proxy_ssl_protocols TLSv1.3;",
            "      proxy_ssl_session_reuse on;",
        ]
    lines += ["    }", "  }", "}", ""]
    return "\n".join(lines)


def _nginx_server_tls(certs: Certs) -> list[str]:
    return [
        f"    ssl_certificate {certs.server_crt};",
        f"    ssl_certificate_key {certs.server_key};",
        f"    ssl_client_certificate {certs.ca};",
        "    ssl_verify_client on;",
        "    ssl_protocols TLSv1.3;",
        "    ssl_session_cache shared:SSL:1m;",
    ]


# -- HAProxy -----------------------------------------------------------------------------------


def haproxy_conf(
    listen_port: int,
    target_port: int,
    *,
    listen_tls: Certs | None = None,
    target_tls: Certs | None = None,
) -> str:
    """HAProxy on ``listen_port`` for ``Host: bench`` -> ``127.0.0.1:target_port``; see above.

    Logs go to stdout (``log stdout``), which the harness sends to a file.
    """
    bind = f"  bind {HOST}:{listen_port}"
    if listen_tls:
        bind += (
            f" ssl crt {listen_tls.server_pem} ca-file {listen_tls.ca} verify required"
            " ssl-min-ver TLSv1.3"
        )
    server = f"  server s1 {HOST}:{target_port} maxconn 4096"
    if target_tls:
        server += (
            f" ssl crt {target_tls.client_pem} ca-file {target_tls.ca} verify required"
            f" verifyhost {SERVICE} sni str({SERVICE}) ssl-min-ver TLSv1.3"
        )
    return "\n".join(
        [
            "global",
            "  nbthread 1",
            "  maxconn 4096",
            "  log stdout format raw local0 info",
            "defaults",
            "  mode http",
            "  log global",
            "  option httplog",
            "  option http-keep-alive",
            "  http-reuse always",
            "  timeout connect 5s",
            "  timeout client 60s",
            "  timeout server 60s",
            "  timeout http-keep-alive 60s",
            "frontend fe",
            bind,
            "  unique-id-format %{+X}o%ci:%cp_%fi:%fp_%Ts_%rt:%pid",
            "  http-request set-header X-Request-Id %[unique-id] "
            "unless { req.hdr(x-request-id) -m found }",
            f"  use_backend be_{SERVICE} if {{ req.hdr(host),field(1,:) -m str {SERVICE} }}",
            "  default_backend be_none",
            f"backend be_{SERVICE}",
            server,
            "backend be_none",
            "  http-request return status 404",
            "",
        ]
    )


# -- running them --------------------------------------------------------------------------------


@dataclass
class Endpoint:
    """A case's entry point and the processes of the proxies under test."""

    name: str
    port: int
    procs: list[Proc]
    access_logs: list[Path] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]


class PeerSet:
    """Writes configs, starts the upstream and the HAProxy/nginx chains, knows their ports."""

    def __init__(
        self,
        procs: Procs,
        work: Path,
        proxy_cpu: int,
        side_cpu: int,
        wrap: Sequence[str] = (),
    ) -> None:
        self.procs = procs
        self.work = work
        self.proxy_cpu = proxy_cpu
        self.side_cpu = side_cpu
        self.wrap = list(wrap)  # a command the HAProxy proxies run under (e.g. valgrind)
        self.root = os.geteuid() == 0
        self.certs: Certs | None = None
        self.upstream_port = 0

    def start_upstream(self) -> int:
        self.upstream_port = free_port()
        proc = self._nginx(
            "upstream",
            self.side_cpu,
            lambda prefix: nginx_upstream_conf(
                prefix, self.upstream_port, upstream_body(), run_as_root=self.root
            ),
        )
        wait_http_ok(HOST, self.upstream_port, procs=[proc], what="the upstream nginx")
        return self.upstream_port

    def _nginx(self, name: str, cpu: int, conf) -> Proc:  # type: ignore[no-untyped-def]
        prefix = self.work / name
        prefix.mkdir(parents=True, exist_ok=True)
        path = prefix / "nginx.conf"
        path.write_text(conf(prefix))
        return self.procs.start(name, ["nginx", "-p", str(prefix), "-c", str(path)], cpu=cpu)

    def _haproxy(self, name: str, conf: str) -> Proc:
        d = self.work / name
        d.mkdir(parents=True, exist_ok=True)
        path = d / "haproxy.cfg"
        path.write_text(conf)
        argv = [*self.wrap, "haproxy", "-db", "-f", str(path)]
        return self.procs.start(name, argv, cpu=self.proxy_cpu)

    def chain(self, kind: str, hops: int, mtls: bool, name: str | None = None) -> Endpoint:
        """Start ``kind`` ("haproxy" or "nginx") proxies: ``hops`` of them in front of the
        upstream, mutual TLS between the two when ``mtls``; the outbound port. ``name``
        (default ``<kind>-<hops>hop[-mtls]``) names the endpoint and the processes' dirs,
        so that a second chain of the same kind gets files of its own."""
        if mtls and self.certs is None:
            self.certs = make_certs(self.work / "certs")
        name = name or f"{kind}-{hops}hop{'-mtls' if mtls else ''}"
        started: list[Proc] = []
        target = self.upstream_port
        for i in range(hops):
            is_inbound = hops == 2 and i == 0  # started first, fronts the upstream
            role = "in" if is_inbound else "out"
            port = free_port()
            listen_tls = self.certs if (mtls and is_inbound) else None
            target_tls = self.certs if (mtls and not is_inbound) else None
            if kind == "haproxy":
                proc = self._haproxy(
                    f"{name}-{role}",
                    haproxy_conf(port, target, listen_tls=listen_tls, target_tls=target_tls),
                )
            else:
                proc = self._nginx(
                    f"{name}-{role}",
                    self.proxy_cpu,
                    lambda prefix, p=port, t=target, lt=listen_tls, tt=target_tls: nginx_proxy_conf(
                        prefix, p, t, listen_tls=lt, target_tls=tt, run_as_root=self.root
                    ),
                )
            started.append(proc)
            if not listen_tls:
                wait_http_ok(
                    HOST, port, headers={"Host": SERVICE}, procs=[proc], what=f"{name}-{role}"
                )
            target = port
        # mTLS: the inbound side is checked through the outbound one.
        wait_http_ok(HOST, target, headers={"Host": SERVICE}, procs=started, what=name)
        if kind == "haproxy":
            logs = [p.log for p in started]  # `log stdout` goes to the process log
        else:
            logs = [self.work / p.name / "access.log" for p in started]
        return Endpoint(name, target, started, logs)


def versions() -> dict[str, str]:
    """Versions of the peers and tools, as their own banners say."""

    def first_line(cmd: Sequence[str], pick: str = "") -> str:
        try:
            r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "not installed"
        text = (r.stdout + r.stderr).strip().splitlines()
        for line in text:
            if pick in line:
                return line.strip()
        return text[0].strip() if text else "?"

    return {
        "haproxy": first_line(["haproxy", "-v"], "version"),
        "nginx": first_line(["nginx", "-v"], "version"),
        "wrk": first_line(["wrk", "-v"], "wrk"),
        "h2load": first_line(["h2load", "--version"], "h2load"),
        "openssl": first_line(["openssl", "version"]),
    }
