"""Demo services that `plait up` and the tests run behind plait proxies.

- ``app``: the demo HTTP service (``python -m plait.demo``, ``plait demo-app``). Each
  instance calls its ``--next`` services through its proxy and answers with the chain of
  ``service/version`` hops the request took, so one curl shows the path through the mesh;
  ``/healthz`` can be made to fail on demand.
- ``http``: the few lines of HTTP/1.1 over asyncio streams the demo app needs.
- ``grpc_app`` / ``grpc_client``: a tiny gRPC server and client for proxyless-gRPC tests.
"""
