"""Reading YAML text into documents that remember where each value was written.

The text is read in plait's YAML dialect (:mod:`~plait.model.yaml_dialect`: an
unquoted ``on`` is a string, not a boolean). PyYAML composes each document into a node
tree (every node knows its line) and then constructs plain Python data from it. We keep
both: the data is validated, and the node tree answers "which line is
``spec.rules[0].timeout`` on?" for the error message (:meth:`Where.line_of`). A value
that is missing from the file gets the line of its nearest written parent, and at worst
the document's first line.

Nothing here raises on bad input: YAML syntax errors (which end the stream, since the
parser cannot resynchronise), values PyYAML cannot construct (``2001-13-45``) and keys
written twice in one mapping (PyYAML would silently keep the last) come back as
:class:`FieldError` values next to the documents read so far.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from plait.model.errors import KEY_MARKER, FieldError, Path, format_path
from plait.model.yaml_dialect import Loader

_YAML_BREAK_RE = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


@dataclass(frozen=True)
class Where:
    """Where a resource came from: file, document number (1-based) and its YAML node."""

    file: str
    document: int
    node: Node | None = None

    def line_of(self, path: Path) -> int | None:
        """1-based line of the field at ``path``, or of its nearest parent in the file."""
        node = self.node
        if node is None:
            return None
        line = node.start_mark.line + 1
        for part in path:
            step = _child(node, part)
            if step is None:
                break
            line, node = step
        return line

    def error(
        self, path: Path, message: str, kind: str | None = None, name: str | None = None
    ) -> FieldError:
        return FieldError(
            file=self.file,
            document=self.document,
            kind=kind,
            name=name,
            field=format_path(path),
            line=self.line_of(path),
            message=message,
        )

    def describe(self, other_file: str) -> str:
        """How an error in ``other_file`` should refer to this place."""
        if self.document == 0:
            return self.file
        if self.file == other_file:
            return f"document {self.document}"
        return f"{self.file} document {self.document}"


def _child(node: Node, part: str | int) -> tuple[int, Node] | None:
    """One step down the node tree: (line of the entry, its value node)."""
    if isinstance(node, MappingNode) and part != KEY_MARKER:
        found: tuple[int, Node] | None = None
        for key, value in node.value:
            if isinstance(key, ScalarNode) and key.value == str(part):
                found = (key.start_mark.line + 1, value)  # the last one wins, as in PyYAML
        return found
    if isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        item: Node = node.value[part]
        return (item.start_mark.line + 1, item)
    return None


@dataclass(frozen=True)
class Document:
    """One non-empty YAML document: its data and where it is."""

    where: Where
    data: object


def read_documents(text: str, filename: str) -> tuple[list[Document], list[FieldError]]:
    """Split ``text`` into its documents; empty documents are skipped but still counted."""
    documents: list[Document] = []
    errors: list[FieldError] = []
    number = 0
    try:
        loader = Loader(text)
    except yaml.YAMLError as exc:  # the reader refuses unprintable characters up front
        return [], [_yaml_error(exc, text, filename, 1)]
    try:
        while True:
            try:
                if not loader.check_node():
                    break
                node = loader.get_node()
                if node is None:
                    break
            except (yaml.YAMLError, RecursionError) as exc:
                errors.append(_yaml_error(exc, text, filename, number + 1))
                break
            number += 1
            where = Where(filename, number, node)
            duplicates = _duplicate_keys(node, where)
            try:
                data = SafeConstructor().construct_document(node)
            except Exception as exc:  # PyYAML raises plain ValueError etc. on odd scalars
                errors.extend(duplicates)
                errors.append(_construct_error(exc, where))
                continue
            kind, name = identify(data)
            errors.extend(dataclasses.replace(e, kind=kind, name=name) for e in duplicates)
            if data is not None:
                documents.append(Document(where, data))
    finally:
        loader.dispose()
    return documents, errors


def identify(data: object) -> tuple[str | None, str | None]:
    """The ``kind`` and ``metadata.name`` of a document's data, where they are strings."""
    if not isinstance(data, Mapping):
        return None, None
    kind = data.get("kind")
    metadata = data.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return (kind if isinstance(kind, str) else None), (name if isinstance(name, str) else None)


def _yaml_error(exc: BaseException, text: str, filename: str, document: int) -> FieldError:
    line: int | None = None
    what = str(exc)
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = min(mark.line + 1, _last_line(text)) if mark is not None else None
        what = exc.problem or what
        if exc.context:
            started = exc.context_mark.line + 1 if exc.context_mark is not None else None
            at = f" that starts at line {started}" if started not in (None, line) else ""
            what = f"{what} ({exc.context}{at})"
    elif isinstance(exc, yaml.reader.ReaderError):
        line = _line_at(text, exc.position)
        what = f"character {exc.character!r} is not allowed in YAML"
    elif isinstance(exc, RecursionError):
        what = "nested too deeply"
    return FieldError(
        file=filename,
        document=document,
        kind=None,
        name=None,
        field="",
        line=line,
        message=f"invalid YAML: {what}; fix the syntax at this line",
    )


def _line_at(text: str, position: int) -> int:
    """1-based line of ``text[position]``, counting line breaks as YAML does."""
    return len(_YAML_BREAK_RE.findall(text, 0, position)) + 1


def _last_line(text: str) -> int:
    """The last line with any text (an error "at the end" points there, not past it)."""
    return _line_at(text, len(text.rstrip(" \t\r\n\x85\u2028\u2029")))


def _construct_error(exc: Exception, where: Where) -> FieldError:
    what = str(exc)
    mark = _failing_scalar(where.node)
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark or mark
        what = exc.problem or what
    line = mark.line + 1 if mark is not None else where.line_of(())
    return FieldError(
        file=where.file,
        document=where.document,
        kind=None,
        name=None,
        field="",
        line=line,
        message=f"invalid YAML value: {what}; quote it if it is meant as a string",
    )


def _failing_scalar(root: Node | None) -> yaml.Mark | None:
    """Where the first scalar PyYAML cannot construct is (its errors do not always say)."""
    seen: set[int] = set()
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, ScalarNode):
            try:
                SafeConstructor().construct_object(node)
            except Exception:
                return node.start_mark
        elif isinstance(node, MappingNode):
            stack.extend(part for pair in reversed(node.value) for part in reversed(pair))
        elif isinstance(node, SequenceNode):
            stack.extend(reversed(node.value))
    return None


def _duplicate_keys(root: Node, where: Where) -> list[FieldError]:
    """Keys written twice in one mapping. Walks each node once (aliases may form cycles)."""
    found: list[FieldError] = []
    seen: set[int] = set()
    stack: list[tuple[Node, Path]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, MappingNode):
            keys: set[str] = set()
            for key, value in node.value:
                if not isinstance(key, ScalarNode):
                    continue
                if key.value in keys:
                    error = where.error((*path, key.value), "is written twice here; keep one")
                    found.append(dataclasses.replace(error, line=key.start_mark.line + 1))
                keys.add(key.value)
                stack.append((value, (*path, key.value)))
        elif isinstance(node, SequenceNode):
            stack.extend((item, (*path, i)) for i, item in enumerate(node.value))
    return found
