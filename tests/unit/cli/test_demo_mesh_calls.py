"""examples/demo-mesh.yaml declares, for every demo Service, exactly what its app calls.

``plait up`` starts the apps of :data:`plait.cli.up.DEMO_HOSTS` (each ``App.next`` is a
service the app calls); the YAML's ``spec.calls`` decide what each proxy is sent
(docs/xds.md, "Scoping"). The two live in different files: these tests fail as soon as
they disagree, so that no demo proxy lacks a service its app calls or gets one it does not.
"""

from __future__ import annotations

from pathlib import Path

from plait.cli.up import DEMO_HOSTS, DEMO_MESH
from plait.model.config import ConfigSet
from plait.model.load import build_config, parse_documents
from plait.xds.inputs import InboundPort, NodeInfo
from plait.xds.translate import Translator

EXAMPLE = Path(__file__).resolve().parents[3] / DEMO_MESH


def demo_config() -> ConfigSet:
    return build_config(parse_documents(EXAMPLE.read_text(), str(EXAMPLE)))


def demo_call_graph() -> dict[str, set[str]]:
    """Service -> the services its demo apps call, over every instance of ``DEMO_HOSTS``."""
    graph: dict[str, set[str]] = {}
    for _host, apps in DEMO_HOSTS:
        for app in apps:
            graph.setdefault(app.name, set()).update(app.next)
    return graph


def test_every_demo_service_declares_exactly_what_its_app_calls() -> None:
    services = demo_config().services
    declared = {name: svc.spec.calls for name, svc in services.items()}
    assert set(declared) == set(demo_call_graph()), "the YAML and DEMO_HOSTS name other services"
    missing = sorted(name for name, calls in declared.items() if calls is None)
    assert not missing, f"no spec.calls (so unscoped: every service) for {missing}"
    assert {name: set(calls or ()) for name, calls in declared.items()} == demo_call_graph()
    for name, calls in declared.items():
        assert len(set(calls or ())) == len(calls or ()), f"{name}: duplicate calls"


def test_every_demo_proxy_is_scoped_to_what_its_apps_call() -> None:
    """What the control plane computes per demo host (Translator.dependencies)."""
    translator = Translator(demo_config(), [])
    for n, (host, apps) in enumerate(DEMO_HOSTS):
        inbound = tuple(
            InboundPort(app.name, "127.0.0.1", 20000 + 10 * n + i, 30000 + 10 * n + i)
            for i, app in enumerate(apps)
        )
        node = NodeInfo(host, plait_proxy=True, outbound_port=1, inbound=inbound)
        expected = frozenset(nxt for app in apps for nxt in app.next)
        assert translator.dependencies(node) == expected, host
