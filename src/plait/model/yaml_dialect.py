"""The YAML dialect plait reads: YAML 1.2-style plain scalars on top of PyYAML.

PyYAML implements YAML 1.1, where an unquoted ``on``, ``off``, ``yes`` or ``no`` is a
boolean, ``12:30`` is the number 750 and ``2024-01-01`` is a date. In a mesh config that
breaks real documents: ``retries: {on: [5xx]}`` would have the key ``True``, and a label
``version: 2024-01-01`` would not be a string. :class:`Loader` resolves unquoted scalars
the YAML 1.2 way, with these rules:

==========  ======================================================================
null        ``~``, ``null``, ``Null``, ``NULL`` and the empty value
bool        ``true``/``false`` (also ``True``, ``TRUE``, ...) only
int         decimal, no leading zeros or underscores: ``80``, ``-1``
float       with a dot, as ``1.5``, ``.5``, ``1.0e+3``; and ``.inf``, ``.nan``
merge       ``<<`` (merge keys still work)
str         everything else
==========  ======================================================================

Each rule matches a subset of what YAML 1.1 resolves to the same type, so anything
written by ``yaml.safe_dump`` (which quotes every string a 1.1 reader would misread)
reads back here unchanged. Explicit tags (``!!int``, ``!!timestamp``) still work.
"""

from __future__ import annotations

import re

from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner


class Resolver(BaseResolver):
    """Implicit tags for plain scalars, per the table in the module docstring."""


_RULES: tuple[tuple[str, str, str], ...] = (
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("int", r"^[-+]?(?:0|[1-9][0-9]*)$", "-+0123456789"),
    (
        "float",
        r"^(?:[-+]?[0-9]+\.[0-9]*(?:[eE][-+][0-9]+)?|\.[0-9]+(?:[eE][-+][0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
    ("merge", r"^<<$", "<"),
    ("null", r"^(?:~|null|Null|NULL|)$", "~nN"),
)

for _tag, _pattern, _first in _RULES:
    _starts = [*_first, ""] if _tag == "null" else list(_first)
    Resolver.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(_pattern), _starts)


class Loader(Reader, Scanner, Parser, Composer, SafeConstructor, Resolver):
    """A safe loader (no Python objects) with plait's scalar rules."""

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
