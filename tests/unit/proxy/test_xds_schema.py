"""The proxy's stripped xDS descriptors (plait.proxy.xds_schema): up to date with the
installed envoy protos, the same messages and fields, and every name the proxy uses there.

The decoders' behaviour on schema messages versus the real generated ones is checked by
the property tests in test_xds_decode.py (``test_schema_and_generated_messages_decode_alike``).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2 as real_cluster_pb2
from envoy.config.core.v3 import base_pb2 as real_base_pb2
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool

import plait.proxy
from plait.proxy import xds_schema
from plait.proxy.xds_schema_gen import SKIP_PREFIXES, build
from plait.proxy.xds_subset import ALLOWED

PROXY_SRC = Path(plait.proxy.__file__).parent


def _schema_files() -> list[descriptor_pb2.FileDescriptorProto]:
    data = Path(xds_schema.SCHEMA_PATH).read_bytes()
    return list(descriptor_pb2.FileDescriptorSet.FromString(data).file)


def _real_module(schema_module: xds_schema.SchemaModule) -> Any:
    name = schema_module.file_name[: -len(".proto")].replace("/", ".") + "_pb2"
    return importlib.import_module(name)


def test_the_committed_schema_is_what_the_generator_makes_from_the_installed_protos() -> None:
    committed = Path(xds_schema.SCHEMA_PATH).read_bytes()
    assert committed == build(), (
        "src/plait/proxy/xds_schema.fds is stale (were the envoy protos upgraded?): "
        "run .venv/bin/python -m plait.proxy.xds_schema_gen"
    )


def test_the_schema_holds_no_annotations_and_no_options_but_map_entry() -> None:
    files = _schema_files()
    names = [f.name for f in files]
    assert len(names) == len(set(names))
    for file in files:
        assert not file.name.startswith(SKIP_PREFIXES), file.name
        assert not file.name.startswith("google/protobuf/"), file.name  # added at load
        assert not [d for d in file.dependency if d.startswith(SKIP_PREFIXES)], file.name
        assert not file.HasField("options") and not file.HasField("source_code_info")
        # each file comes after its dependencies (the pool is built in this order)
        before = set(names[: names.index(file.name)])
        assert all(d in before or d.startswith("google/protobuf/") for d in file.dependency)

        def walk(msg: descriptor_pb2.DescriptorProto) -> None:
            kept = descriptor_pb2.MessageOptions()
            if msg.options.map_entry:
                kept.map_entry = True
            assert msg.options == kept, msg.name
            for field in msg.field:
                assert (
                    not field.HasField("options")
                    or field.options.ListFields()[0][0].name == "packed"
                ), (msg.name, field.name)
            for nested in msg.nested_type:
                walk(nested)

        for msg in file.message_type:
            walk(msg)


def _field_shapes(message: Any) -> list[tuple[Any, ...]]:
    """What decoding depends on in each field of ``message`` (a Descriptor), by number."""
    return [
        (
            f.name,
            f.number,
            f.type,
            f.is_repeated,
            f.has_presence,
            f.containing_oneof.name if f.containing_oneof else None,
            f.message_type.full_name if f.message_type else None,
            f.enum_type.full_name if f.enum_type else None,
        )
        for f in sorted(message.fields, key=lambda f: f.number)
    ]


def _same_fields(schema: Any, real: Any, seen: set[str]) -> None:
    """Two message descriptors have the same fields (recursively): what the wire and the
    decoders see."""
    if real.full_name in seen:
        return
    seen.add(real.full_name)
    assert schema.full_name == real.full_name
    assert real.GetOptions().map_entry == schema.GetOptions().map_entry, real.full_name
    shape = _field_shapes(real)
    got = _field_shapes(schema)
    assert got == shape, real.full_name
    for f in real.fields:
        if f.message_type is not None:
            _same_fields(schema.fields_by_name[f.name].message_type, f.message_type, seen)
        if f.enum_type is not None:
            mine = schema.fields_by_name[f.name].enum_type
            assert [(v.name, v.number) for v in mine.values] == [
                (v.name, v.number) for v in f.enum_type.values
            ], f.enum_type.full_name


def test_every_message_in_the_schema_has_the_fields_of_the_generated_one() -> None:
    for module in xds_schema.MODULES:
        _real_module(module)  # loads the real file and its dependencies
    default = descriptor_pool.Default()
    mine = xds_schema.pool()
    seen: set[str] = set()
    count = 0
    for file in _schema_files():
        for msg in file.message_type:
            name = f"{file.package}.{msg.name}"
            _same_fields(
                mine.FindMessageTypeByName(name), default.FindMessageTypeByName(name), seen
            )
            count += 1
    assert count > 200 and len(seen) > count


@pytest.mark.parametrize("module", xds_schema.MODULES, ids=lambda m: m.file_name)
def test_a_schema_module_has_what_the_generated_module_has(module: Any) -> None:
    real = _real_module(module)
    assert module.DESCRIPTOR.name == real.DESCRIPTOR.name == module.file_name
    assert module.DESCRIPTOR.pool is xds_schema.pool()
    for name, desc in real.DESCRIPTOR.message_types_by_name.items():
        cls = getattr(module, name)
        assert cls.DESCRIPTOR.full_name == desc.full_name
        assert cls is getattr(module, name)  # kept
        for nested in desc.nested_types:  # nested messages are attributes of their parent
            if not nested.GetOptions().map_entry:
                assert getattr(cls, nested.name).DESCRIPTOR.full_name == nested.full_name
        for enum in desc.enum_types:  # nested enums, and their values on the parent
            wrapper = getattr(cls, enum.name)
            assert wrapper.items() == getattr(getattr(real, name), enum.name).items()
            for value in enum.values:
                assert getattr(cls, value.name) == value.number
    for name in real.DESCRIPTOR.enum_types_by_name:
        assert getattr(module, name).items() == getattr(real, name).items()
        for value_name, number in getattr(real, name).items():
            assert getattr(module, value_name) == number == getattr(real, value_name)
    with pytest.raises(AttributeError):
        _ = module.NoSuchMessage


def _schema_uses() -> list[tuple[str, str]]:
    """(file, dotted name) of every ``<module>.<Attr>...`` chain the proxy's sources take
    from plait.proxy.xds_schema (the stand-ins they import)."""
    uses: list[tuple[str, str]] = []
    for path in sorted(PROXY_SRC.glob("*.py")):
        if path.name in ("xds_schema.py", "xds_schema_gen.py"):
            continue
        tree = ast.parse(path.read_text())
        local: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "plait.proxy.xds_schema":
                for alias in node.names:
                    local[alias.asname or alias.name] = alias.name
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            chain: list[str] = []
            inner: ast.expr = node
            while isinstance(inner, ast.Attribute):
                chain.insert(0, inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id in local:
                uses.append((path.name, ".".join([local[inner.id], *chain])))
    return sorted(set(uses))


def test_every_name_the_proxy_takes_from_the_schema_resolves() -> None:
    uses = _schema_uses()
    files = {f for f, _ in uses}
    assert {"xds_decode.py", "xds_decode_listener.py", "xds_client.py"} <= files
    assert len(uses) >= 25
    for file, dotted in uses:
        first, *rest = dotted.split(".")
        value: Any = getattr(xds_schema, first)
        assert isinstance(value, xds_schema.SchemaModule), (file, dotted)
        for part in rest:
            value = getattr(value, part)


def test_every_message_of_the_supported_subset_is_in_the_schema() -> None:
    for name in ALLOWED:
        assert xds_schema.message_class(name).DESCRIPTOR.full_name == name


def test_the_pool_is_private_and_lives_with_the_generated_protos() -> None:
    assert xds_schema.pool() is not descriptor_pool.Default()
    assert xds_schema.pool() is xds_schema.pool()  # loaded once
    real = real_cluster_pb2.Cluster(name="c", lb_policy=real_cluster_pb2.Cluster.LEAST_REQUEST)
    real.connect_timeout.seconds = 2
    mine = xds_schema.cluster_pb2.Cluster.FromString(real.SerializeToString())
    assert (mine.name, mine.lb_policy, mine.connect_timeout.ToTimedelta().total_seconds()) == (
        "c",
        xds_schema.cluster_pb2.Cluster.LEAST_REQUEST,
        2.0,
    )
    assert real_cluster_pb2.Cluster.FromString(mine.SerializeToString()) == real


def test_well_known_types_work_on_schema_messages() -> None:
    node = xds_schema.base_pb2.Node(id="n")
    node.metadata.update({"plait_proxy": True, "inbound": [{"port": 1.0}]})
    real = real_base_pb2.Node.FromString(node.SerializeToString())
    assert real.metadata["plait_proxy"] is True
    assert real.metadata["inbound"][0]["port"] == 1.0
    packed = xds_schema.message_class("google.protobuf.Any")()
    packed.Pack(xds_schema.cluster_pb2.Cluster(name="c"))
    assert packed.Is(real_cluster_pb2.Cluster.DESCRIPTOR)
    out = real_cluster_pb2.Cluster()
    assert packed.Unpack(out) and out.name == "c"
    real_any = any_pb2.Any()
    real_any.Pack(real_cluster_pb2.Cluster(name="d"))
    mine = xds_schema.cluster_pb2.Cluster()
    assert real_any.Unpack(mine) and mine.name == "d"


def test_unknown_fields_survive_a_schema_round_trip() -> None:
    real = real_cluster_pb2.Cluster(name="c")
    raw = real.SerializeToString() + b"\xb8\x3e\x07"  # field 999, varint 7
    mine = xds_schema.cluster_pb2.Cluster.FromString(raw)
    assert mine.name == "c"
    assert mine.SerializeToString() == raw


@pytest.mark.parametrize(
    "data",
    [b"\x12\x00", b"\x0a", b"\x0a\x05abc", b"\x0a\xff"],
    ids=["wrong-field", "no-length", "short", "bad-varint"],
)
def test_a_damaged_file_set_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="FileDescriptorSet"):
        list(xds_schema.split_file_set(data))
