"""Pure translation: config model + registry state -> per-node xDS v3 resources.

No sockets, clocks or globals live here; the ADS server in ``plait.control`` calls in.
docs/xds.md is the contract this package implements (resource names, node metadata,
the supported subset of fields).

Modules, in the order data flows through them:

- ``inputs``    — what translation reads besides config: registry ``Instance``\\ s and the
  asking node (``NodeInfo``, ``InboundPort``).
- ``names``     — resource names (``outbound``, ``outbound|<svc>``, ``inbound|<svc>``,
  ``outbound|<svc>|<subset>``, ``grpc|<svc>``, ``trust-bundle``, SPIFFE ids), one helper
  per shape.
- ``builders``  — small functions that make the Envoy protos (clusters, load assignments,
  routes, listeners), setting only fields of the supported subset.
- ``translate`` — ``Translator(config, instances).for_node(node) -> Snapshot``, reusing
  the parts that do not depend on the node; ``translate()`` for a single node.
- ``snapshot``  — ``Snapshot``: resources by type URL and name, content-hash versions,
  request subsets, and the consistency check (go-control-plane's ``Consistent()``).
- ``types``     — type URLs, ``PUSH_ORDER`` (the trust bundle, then clusters and
  endpoints, before listeners and routes) and the short names
  ``SDS``/``CDS``/``EDS``/``LDS``/``RDS``.

Typical use by a server::

    translator = Translator(config, registry.instances(),   # once per change
                            trust_domain=td, trust_bundle=ca.trust_bundle())
    snapshot = translator.for_node(node)                     # per connected node
    assert not snapshot.consistency_errors()
    for type_url in PUSH_ORDER:
        send(type_url, snapshot.version(type_url), snapshot.subset(type_url, requested))
"""
