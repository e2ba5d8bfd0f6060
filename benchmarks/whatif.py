#!/usr/bin/env python3
"""What-if experiments: the plait proxy with one part of its request path switched off or
replaced (monkeypatched at start-up, src/ untouched), CPU per request compared A/B.

    .venv/bin/python benchmarks/whatif.py [--variants plain,nolog,noobs,nocheck] [--rounds 4]

One control plane with the upstream nginx registered as ``bench`` (as the ``plait-1hop``
case), and one outbound proxy per variant, all on CPU 0; wrk on CPU 1 drives them in
turn (A B C A B C …), 5 s each after 1 s of warm-up, and each run's proxy CPU seconds per
10k requests is read from /proc. CPU per request does not depend on how much of the core
the proxy got, so this works on a noisy machine; differences under ~5% are noise.

The patches name plait internals as they are today (``DataPlane.observe``,
``AccessLog.log``/``request``/``write``, ``check_field_chars`` in ``http1_checks_request`` and
``http1_checks_response``, ``Exchange._finish``); a variant whose target moved fails at
start with an AttributeError in its log, or silently measures nothing (check its effect is
plausible).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import load  # noqa: E402
import plait_case  # noqa: E402
from peers import SERVICE, PeerSet  # noqa: E402
from procs import Procs, cpu_seconds, wait_http_ok, wait_until  # noqa: E402

PROXY_CPU, SIDE_CPU = 0, 1

RUN = '\nimport runpy\nrunpy.run_module("plait.proxy", run_name="__main__", alter_sys=True)\n'

# Each variant: Python run before ``python -m plait.proxy``.
VARIANTS = {
    "plain": "",
    # no access log line at all (what observe computes for it is still computed)
    "nolog": (
        "import plait.proxy.accesslog as m\n"
        "m.AccessLog.log = lambda self, record: None\n"
        "m.AccessLog.request = lambda self, *args, **kwargs: None\n"
        # DataPlane.observe formats the request line itself and hands it to .write
        "m.AccessLog.write = property(lambda self: lambda line: None)\n"
    ),
    # neither access log nor metrics: DataPlane.observe does nothing
    "noobs": "import plait.proxy.dataplane as m\nm.DataPlane.observe = lambda self, ex: None\n",
    # no field character checks on request and response heads
    "nocheck": (
        "import plait.proxy.http1_checks_request as m\n"
        "import plait.proxy.http1_checks_response as r\n"
        "m.check_field_chars = r.check_field_chars = lambda headers, fault=400: None\n"
    ),
    # no Exchange <-> Attempt reference cycle: a finished exchange drops its attempt, so
    # reference counting frees a request's objects and the cyclic GC has little to do
    "nocycle": (
        "import plait.proxy.http1_exchange as m\n_finish = m.Exchange._finish\n"
        "def finish(self):\n    _finish(self)\n    self.attempt = None\n"
        "m.Exchange._finish = finish\n"
    ),
    # fewer garbage collections: start-up objects frozen, a large generation-0 threshold
    "gc": "import gc\ngc.freeze()\ngc.set_threshold(100_000, 50, 100)\n",
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/whatif.py", description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="plain,nocycle,nolog,noobs,nocheck")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--duration", type=float, default=5.0)
    a = p.parse_args(argv)
    variants = a.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    os.sched_setaffinity(0, {SIDE_CPU})
    work = HERE / "out" / "whatif"
    work.mkdir(parents=True, exist_ok=True)
    procs = Procs(work / "logs")
    pc = None
    try:
        side = PeerSet(procs, work, PROXY_CPU, SIDE_CPU)
        side.start_upstream()
        pc = plait_case.PlaitCase(
            procs,
            work / "plait",
            hops=1,
            upstream_port=side.upstream_port,
            proxy_cpu=PROXY_CPU,
            side_cpu=SIDE_CPU,
        )
        pc.start()  # control plane, upstream registration, and a reference proxy (idle)
        ports = {}
        for v in variants:
            node = f"whatif-{v}"
            ready = work / f"{node}.ready.json"
            ready.unlink(missing_ok=True)
            doc = plait_case.bootstrap(node, pc.control_info, work, app_port=None, ready_file=ready)
            (work / f"{node}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
            script = work / f"{node}.py"
            script.write_text(VARIANTS[v] + RUN)
            argv_ = [sys.executable, str(script), "--config", str(work / f"{node}.yaml")]
            proc = procs.start(node, [*argv_, "--log-level", "WARNING"], cpu=PROXY_CPU)
            wait_until(ready.exists, 30, node, [proc])
            port = int(json.loads(ready.read_text())["outbound"].rsplit(":", 1)[1])
            wait_http_ok("127.0.0.1", port, headers={"Host": SERVICE}, procs=[proc], what=node)
            ports[v] = (proc, port)
        runs: dict[str, list[float]] = {v: [] for v in variants}
        for r in range(a.rounds):
            for v, (proc, port) in ports.items():
                url = f"http://127.0.0.1:{port}/"

                def wrk(s: float, url: str = url) -> list[str]:
                    return load.wrk_argv(url, host=SERVICE, connections=50, threads=1, duration=s)

                load.run_wrk(wrk(1), cpu=SIDE_CPU, timeout=30)
                c0 = cpu_seconds([proc.pid])
                res, _ = load.run_wrk(wrk(a.duration), cpu=SIDE_CPU, timeout=a.duration + 30)
                per10k = (cpu_seconds([proc.pid]) - c0) / res["requests"] * 1e4
                runs[v].append(per10k)
                print(
                    f"round {r + 1} {v}: {per10k:.3f} CPU-s/10k req, {res['rps']:,.0f} req/s",
                    flush=True,
                )
        base = statistics.median(runs[variants[0]])
        print()
        print("| variant | CPU s / 10k req (median) | vs " + variants[0] + " | runs |")
        print("| --- | ---: | ---: | --- |")
        for v in variants:
            med = statistics.median(runs[v])
            print(
                f"| {v} | {med:.3f} | {med / base:.2f}× | "
                f"{', '.join(f'{x:.3f}' for x in runs[v])} |"
            )
    finally:
        if pc is not None:
            pc._stop.set()
        procs.stop_all()
        for path in [*work.glob("access-*.log"), *(work / "plait").glob("access-*.log")]:
            path.unlink()  # a line per request: hundreds of MB, of no use here
    return 0


if __name__ == "__main__":
    sys.exit(main())
