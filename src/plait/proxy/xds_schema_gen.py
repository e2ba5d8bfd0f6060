"""Make ``xds_schema.fds``, the proxy's stripped xDS descriptors (:mod:`plait.proxy.xds_schema`).

Run after upgrading ``xds-protos`` (or changing :data:`plait.proxy.xds_schema.MODULES`)::

    .venv/bin/python -m plait.proxy.xds_schema_gen            # rewrite the file
    .venv/bin/python -m plait.proxy.xds_schema_gen --check    # exit 1 if it is stale

It takes the ``FileDescriptorProto`` of every file in ``MODULES`` and, recursively, of
every file they import, from the installed generated modules; drops the imports that
only carry annotations (``validate/``, ``udpa/annotations/``, ``xds/annotations/``,
``envoy/annotations/``, ``google/protobuf/descriptor.proto``) and leaves out the
well-known types (``google/protobuf/*``: the proxy adds the installed protobuf's copies);
strips every option but ``map_entry`` (a map field) and ``packed`` (the wire form of a
repeated scalar), and the source info; and writes the files as one
``FileDescriptorSet``, each file after its dependencies, serialized deterministically.
The output depends only on the installed protos: ``tests/unit/proxy/test_xds_schema.py``
checks the committed file against it. This module imports the real envoy protos: the
proxy never imports it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from google.protobuf import descriptor_pb2

from plait.proxy.xds_schema import MODULES, SCHEMA_PATH

SKIP_PREFIXES = (
    "validate/",
    "udpa/annotations/",
    "xds/annotations/",
    "envoy/annotations/",
    "google/protobuf/descriptor.proto",
)
WKT_PREFIX = "google/protobuf/"


def _module_name(file_name: str) -> str:
    return file_name[: -len(".proto")].replace("/", ".") + "_pb2"


def _strip_enum(enum: Any) -> None:
    enum.ClearField("options")
    for value in enum.value:
        value.ClearField("options")


def _strip_message(msg: Any) -> None:
    map_entry = msg.options.map_entry
    msg.ClearField("options")
    if map_entry:
        msg.options.map_entry = True
    for field in list(msg.field) + list(msg.extension):
        packed = field.options.packed if field.options.HasField("packed") else None
        field.ClearField("options")
        if packed is not None:
            field.options.packed = packed
    for oneof in msg.oneof_decl:
        oneof.ClearField("options")
    for nested in msg.nested_type:
        _strip_message(nested)
    for enum in msg.enum_type:
        _strip_enum(enum)
    for ext_range in msg.extension_range:
        ext_range.ClearField("options")


def _strip_file(proto: Any) -> None:
    proto.ClearField("options")
    proto.ClearField("source_code_info")
    for msg in proto.message_type:
        _strip_message(msg)
    for enum in proto.enum_type:
        _strip_enum(enum)
    for field in proto.extension:
        field.ClearField("options")
    for service in proto.service:
        service.ClearField("options")
        for method in service.method:
            method.ClearField("options")
    kept = [d for d in proto.dependency if not d.startswith(SKIP_PREFIXES)]
    del proto.dependency[:]
    proto.dependency.extend(kept)
    # indices into the old list: none of the kept files re-exports or weakly imports
    del proto.public_dependency[:]
    del proto.weak_dependency[:]


def build() -> bytes:
    """The serialized FileDescriptorSet, from the installed generated protos."""
    files: dict[str, Any] = {}  # each file after its dependencies (post-order)
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name.startswith(SKIP_PREFIXES) or name.startswith(WKT_PREFIX):
            return
        seen.add(name)  # .proto imports have no cycles
        descriptor = importlib.import_module(_module_name(name)).DESCRIPTOR
        for dep in descriptor.dependencies:
            visit(dep.name)
        proto = descriptor_pb2.FileDescriptorProto()
        descriptor.CopyToProto(proto)
        _strip_file(proto)
        files[name] = proto

    for module in MODULES:
        visit(module.file_name)
    kept = set(files)
    for name, proto in files.items():
        missing = [d for d in proto.dependency if d not in kept and not d.startswith(WKT_PREFIX)]
        if missing:
            raise RuntimeError(f"{name} needs {missing}, which are not in the set")
    file_set = descriptor_pb2.FileDescriptorSet(file=list(files.values()))
    data: bytes = file_set.SerializeToString(deterministic=True)
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plait.proxy.xds_schema_gen")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--output", default=SCHEMA_PATH, help=f"default: {SCHEMA_PATH}")
    args = parser.parse_args(argv)
    data = build()
    if args.check:
        try:
            with open(args.output, "rb") as f:
                current = f.read()
        except FileNotFoundError:
            current = b""
        if current != data:
            print(f"{args.output} is stale: run python -m plait.proxy.xds_schema_gen")
            return 1
        print(f"{args.output} is up to date")
        return 0
    with open(args.output, "wb") as f:
        f.write(data)
    count = len(descriptor_pb2.FileDescriptorSet.FromString(data).file)
    print(f"wrote {args.output}: {count} files, {len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
