"""The xDS message classes the proxy uses, from a private descriptor pool.

Why: the generated ``envoy`` protos are the proxy's biggest import. Importing the 17
``_pb2`` modules the decoders and the xDS client need pulls in about 114 ``envoy.*``
modules plus the udpa/xds/validate annotation modules (``descriptor_pb2`` with them),
about 8 MB resident per proxy process (docs/internals.md, "Memory"). The proxy needs
none of the options those annotation modules describe, only the messages' fields.

So ``xds_schema.fds`` (next to this module, package data) holds the
``FileDescriptorProto``\\ s of exactly those files and the files they depend on, with
every option stripped (except ``map_entry`` and ``packed``, which change what a message
is) and the annotation-only dependencies dropped: 71 files, about 116 KB. It is loaded
once, on first use, into a **private** ``DescriptorPool`` (with copies of the
well-known-type files it depends on: ``google/protobuf/any.proto``, ``struct``, ...,
taken from the installed protobuf), and message classes come from
``message_factory.GetMessageClass``: about 2 MB instead of 8. The pool must be private:
the control plane, the CLI and the tests load the real generated envoy modules (into
the default pool) in the same interpreter, and the two would conflict.

Each ``<name>_pb2`` below stands in for the generated module of the same name (the
decoders changed only their imports): its top-level messages, top-level enums (an
``EnumTypeWrapper``), their value names (``health_check_pb2.HEALTHY``) and
``DESCRIPTOR`` are attributes; nested messages and enums are attributes of their
parents, as with generated classes. Messages from the two pools interoperate through
their fields and bytes (``FromString(real.SerializeToString())``), not through
``isinstance``, ``CopyFrom`` or ``MergeFrom``.

The file is made by ``python -m plait.proxy.xds_schema_gen`` from the installed
``xds-protos`` (rerun it after upgrading them; ``tests/unit/proxy/test_xds_schema.py``
fails until then). The set is read without ``descriptor_pb2`` (another 0.6 MB): a
``FileDescriptorSet`` is only field 1, repeated, length-delimited.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from typing import Any, Final

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

SCHEMA_PATH: Final = os.path.join(os.path.dirname(os.path.abspath(__file__)), "xds_schema.fds")
_WKT_PREFIX: Final = "google/protobuf/"

_pool: descriptor_pool.DescriptorPool | None = None


def split_file_set(data: bytes) -> Iterator[bytes]:
    """The serialized ``FileDescriptorProto``\\ s of a serialized ``FileDescriptorSet``
    (field 1, wire type 2, the only field it has)."""
    pos, end = 0, len(data)
    while pos < end:
        if data[pos] != 0x0A:
            raise ValueError(f"{SCHEMA_PATH}: not a FileDescriptorSet (byte {pos})")
        pos += 1
        size = shift = 0
        while True:
            if pos >= end or shift > 63:
                raise ValueError(f"{SCHEMA_PATH}: truncated FileDescriptorSet")
            byte = data[pos]
            pos += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if pos + size > end:
            raise ValueError(f"{SCHEMA_PATH}: truncated FileDescriptorSet")
        yield data[pos : pos + size]
        pos += size


def load(data: bytes) -> descriptor_pool.DescriptorPool:
    """A new private pool holding the files of ``data`` (a serialized FileDescriptorSet
    whose files come after their dependencies) and the well-known types they import."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()
    for serialized in split_file_set(data):
        # the well-known types: the installed protobuf's own copy (its _pb2 module is tiny)
        for dep in _dependencies(serialized):
            if dep.startswith(_WKT_PREFIX) and dep not in added:
                module = importlib.import_module(dep[: -len(".proto")].replace("/", ".") + "_pb2")
                pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
                added.add(dep)
        pool.AddSerializedFile(serialized)
    return pool


def _dependencies(serialized: bytes) -> list[str]:
    """The ``dependency`` entries (field 3) of a serialized FileDescriptorProto."""
    # Parsing the whole proto would need descriptor_pb2; the pool has the descriptor once
    # it is added, but a dependency must be added first. Walk the top-level fields.
    deps: list[str] = []
    pos, end = 0, len(serialized)
    while pos < end:
        key, pos = _varint(serialized, pos)
        wire = key & 7
        if wire == 0:
            _, pos = _varint(serialized, pos)
        elif wire == 2:
            size, pos = _varint(serialized, pos)
            if key >> 3 == 3:
                deps.append(serialized[pos : pos + size].decode())
            pos += size
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"{SCHEMA_PATH}: unexpected wire type {wire}")
    return deps


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def pool() -> descriptor_pool.DescriptorPool:
    """The private pool, loaded from :data:`SCHEMA_PATH` on first use."""
    global _pool
    if _pool is None:
        with open(SCHEMA_PATH, "rb") as f:
            _pool = load(f.read())
    return _pool


def message_class(full_name: str) -> Any:
    """The private-pool class of the message ``full_name`` (``envoy.config.core.v3.Node``)."""
    return message_factory.GetMessageClass(pool().FindMessageTypeByName(full_name))


class SchemaModule:
    """Stands in for the generated ``_pb2`` module of one ``.proto`` file: messages, enums,
    enum values and ``DESCRIPTOR`` are looked up on first use (and then kept)."""

    def __init__(self, file_name: str) -> None:
        self.file_name: Final = file_name

    def __repr__(self) -> str:
        return f"<xds schema module {self.file_name!r}>"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        file = pool().FindFileByName(self.file_name)
        value: Any
        if name == "DESCRIPTOR":
            value = file
        elif name in file.message_types_by_name:
            value = message_factory.GetMessageClass(file.message_types_by_name[name])
        elif name in file.enum_types_by_name:
            value = EnumTypeWrapper(file.enum_types_by_name[name])
        else:
            for enum in file.enum_types_by_name.values():
                if name in enum.values_by_name:
                    value = enum.values_by_name[name].number
                    break
            else:
                raise AttributeError(f"{self.file_name} has no message or enum {name!r}")
        setattr(self, name, value)
        return value


_CORE = "envoy/config/core/v3"
_TLS = "envoy/extensions/transport_sockets/tls/v3"

# The generated modules the proxy used, by the names it imported them as.
base_pb2: Final = SchemaModule(f"{_CORE}/base.proto")
config_source_pb2: Final = SchemaModule(f"{_CORE}/config_source.proto")
health_check_pb2: Final = SchemaModule(f"{_CORE}/health_check.proto")
cluster_pb2: Final = SchemaModule("envoy/config/cluster/v3/cluster.proto")
endpoint_pb2: Final = SchemaModule("envoy/config/endpoint/v3/endpoint.proto")
listener_pb2: Final = SchemaModule("envoy/config/listener/v3/listener.proto")
route_pb2: Final = SchemaModule("envoy/config/route/v3/route.proto")
rbac_pb2: Final = SchemaModule("envoy/config/rbac/v3/rbac.proto")
http_rbac_pb2: Final = SchemaModule("envoy/extensions/filters/http/rbac/v3/rbac.proto")
router_pb2: Final = SchemaModule("envoy/extensions/filters/http/router/v3/router.proto")
tls_inspector_pb2: Final = SchemaModule(
    "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto"
)
hcm_pb2: Final = SchemaModule(
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto"
)
common_pb2: Final = SchemaModule(f"{_TLS}/common.proto")
tls_pb2: Final = SchemaModule(f"{_TLS}/tls.proto")
secret_pb2: Final = SchemaModule(f"{_TLS}/secret.proto")
discovery_pb2: Final = SchemaModule("envoy/service/discovery/v3/discovery.proto")
status_pb2: Final = SchemaModule("google/rpc/status.proto")

MODULES: Final = (
    base_pb2,
    config_source_pb2,
    health_check_pb2,
    cluster_pb2,
    endpoint_pb2,
    listener_pb2,
    route_pb2,
    rbac_pb2,
    http_rbac_pb2,
    router_pb2,
    tls_inspector_pb2,
    hcm_pb2,
    common_pb2,
    tls_pb2,
    secret_pb2,
    discovery_pb2,
    status_pb2,
)
"""Every stand-in module; their files (and dependencies) are what the schema holds."""
