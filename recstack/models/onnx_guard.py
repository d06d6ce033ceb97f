"""Refuse ONNX models that could read outside their bundle or need custom operators.

Model files are programs: before ONNX Runtime sees one, its protobuf is walked (a small
wire-format reader, so serving needs no ``onnx`` package) and refused when

- a tensor's external data ``location`` is absolute, contains ``..``, resolves outside the
  model's directory, or passes through a symlink (ORT would read that file), or
- the model imports an operator-set domain that is not built into ONNX Runtime (a custom
  op library would be needed; recstack never registers one).

Only the fields on the path to tensors are decoded; everything else is skipped by wire type.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from recstack.core.bundle import safe_member
from recstack.core.errors import BundleError

BUILTIN_DOMAINS = frozenset(
    {
        "",
        "ai.onnx",
        "ai.onnx.ml",
        "com.microsoft",
        "ai.onnx.preview.training",
        "com.microsoft.nchwc",
    }
)

# Field numbers from onnx.proto3.
MODEL_GRAPH, MODEL_OPSET, MODEL_FUNCTIONS = 7, 8, 25
OPSET_DOMAIN = 1
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_SPARSE_INIT = 1, 5, 15
NODE_ATTRIBUTE, NODE_DOMAIN = 5, 7
ATTR_T, ATTR_G, ATTR_TENSORS, ATTR_GRAPHS, ATTR_SPARSE, ATTR_SPARSES = 5, 6, 10, 11, 22, 23
SPARSE_VALUES, SPARSE_INDICES = 1, 2
TENSOR_EXTERNAL_DATA = 13
FUNCTION_NODE = 7
ENTRY_KEY, ENTRY_VALUE = 1, 2


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise BundleError("truncated ONNX model (varint)")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise BundleError("malformed ONNX model (varint too long)")


def _fields(buf: bytes) -> Iterator[tuple[int, bytes | int]]:
    """(field number, value) for each field; length-delimited values as bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, value
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise BundleError("truncated ONNX model (field length)")
            yield number, buf[pos : pos + length]
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise BundleError(f"malformed ONNX model (wire type {wire})")


def _sub(buf: bytes, *numbers: int) -> Iterator[bytes]:
    for number, value in _fields(buf):
        if number in numbers and isinstance(value, bytes):
            yield value


def _text(buf: bytes, number: int) -> str:
    for value in _sub(buf, number):
        return value.decode("utf-8", errors="replace")
    return ""


def _tensor_locations(tensor: bytes) -> Iterator[str]:
    for entry in _sub(tensor, TENSOR_EXTERNAL_DATA):
        if _text(entry, ENTRY_KEY) == "location":
            yield _text(entry, ENTRY_VALUE)


def _graph(graph: bytes) -> Iterator[tuple[str, str]]:
    """('location', path) and ('domain', name) found anywhere in a graph."""
    for tensor in _sub(graph, GRAPH_INITIALIZER):
        for loc in _tensor_locations(tensor):
            yield "location", loc
    for sparse in _sub(graph, GRAPH_SPARSE_INIT):
        for tensor in _sub(sparse, SPARSE_VALUES, SPARSE_INDICES):
            for loc in _tensor_locations(tensor):
                yield "location", loc
    for node in _sub(graph, GRAPH_NODE):
        yield from _node(node)


def _node(node: bytes) -> Iterator[tuple[str, str]]:
    yield "domain", _text(node, NODE_DOMAIN)
    for attr in _sub(node, NODE_ATTRIBUTE):
        for tensor in _sub(attr, ATTR_T, ATTR_TENSORS):
            for loc in _tensor_locations(tensor):
                yield "location", loc
        for sparse in _sub(attr, ATTR_SPARSE, ATTR_SPARSES):
            for tensor in _sub(sparse, SPARSE_VALUES, SPARSE_INDICES):
                for loc in _tensor_locations(tensor):
                    yield "location", loc
        for sub in _sub(attr, ATTR_G, ATTR_GRAPHS):
            yield from _graph(sub)


def check_model(path: Path) -> None:
    """Raise BundleError if the model at ``path`` is unsafe to hand to ONNX Runtime."""
    data = path.read_bytes()
    base = path.parent.resolve()
    findings: list[tuple[str, str]] = []
    for number, value in _fields(data):
        if not isinstance(value, bytes):
            continue
        if number == MODEL_GRAPH:
            findings.extend(_graph(value))
        elif number == MODEL_OPSET:
            findings.append(("domain", _text(value, OPSET_DOMAIN)))
        elif number == MODEL_FUNCTIONS:
            for node in _sub(value, FUNCTION_NODE):
                findings.extend(_node(node))
    for kind, found in findings:
        if kind == "domain" and found not in BUILTIN_DOMAINS:
            raise BundleError(
                f"{path.name}: operator domain {found!r} is not built into "
                "ONNX Runtime (custom op libraries are not allowed)"
            )
        if kind == "location":
            _check_location(path, base, found)


def _check_location(path: Path, base: Path, location: str) -> None:
    try:
        target = safe_member(base, location)  # no absolute path, "..", or symlink on the way
    except BundleError as exc:
        raise BundleError(f"{path.name}: external data {location!r}: {exc}") from exc
    if not target.resolve().is_relative_to(base):
        raise BundleError(f"{path.name}: external data {location!r} resolves outside the bundle")
