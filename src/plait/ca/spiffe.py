"""SPIFFE ids for plait services: ``spiffe://<trust-domain>/svc/<service>``.

Rules (a subset of the SPIFFE ID spec, stricter where plait needs it):

- the scheme is exactly ``spiffe://`` (lowercase); no userinfo, port, query, fragment or
  percent-encoding anywhere;
- the trust domain is lowercase: dot-separated labels of ``[a-z0-9_-]``, no empty label,
  at most 255 characters;
- the path is exactly ``/svc/<service>``: two segments, no trailing slash;
- the service name is a DNS label (the rule plait's config uses for names): lowercase
  letters, digits and ``-``, starting and ending with a letter or digit, 1-63 characters.

Anything else raises :class:`InvalidSpiffeId` (a ``ValueError``) saying which rule failed.
``str(SpiffeId.parse(uri)) == uri`` for every accepted ``uri``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME = "spiffe://"
CONTROL_SERVICE = "plait-control"  # the control plane's own identity (its HTTPS listener)
SERVICE_PREFIX = "/svc/"
MAX_TRUST_DOMAIN = 255

SERVICE_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_TD_LABEL_RE = re.compile(r"[a-z0-9_-]+")


class InvalidSpiffeId(ValueError):
    """The text is not a plait SPIFFE id; the message says which rule it breaks."""


def check_trust_domain(trust_domain: str) -> str:
    """``trust_domain`` if it is valid, else raise :class:`InvalidSpiffeId`."""
    if not trust_domain:
        raise InvalidSpiffeId("the trust domain is empty")
    if len(trust_domain) > MAX_TRUST_DOMAIN:
        raise InvalidSpiffeId(f"the trust domain is longer than {MAX_TRUST_DOMAIN} characters")
    if not all(_TD_LABEL_RE.fullmatch(label) for label in trust_domain.split(".")):
        raise InvalidSpiffeId(
            f"trust domain {trust_domain!r} must be lowercase labels of letters, digits, "
            "'-' and '_' separated by single dots (like 'plait.local')"
        )
    return trust_domain


def check_service(service: str) -> str:
    """``service`` if it is a valid service name (DNS label), else raise InvalidSpiffeId."""
    if not SERVICE_RE.fullmatch(service):
        raise InvalidSpiffeId(
            f"service name {service!r} must be a DNS label: lowercase letters, digits and "
            "'-', starting and ending with a letter or digit, at most 63 characters"
        )
    return service


@dataclass(frozen=True, order=True)
class SpiffeId:
    """A service identity. Construct with :meth:`parse` or :meth:`for_service`."""

    trust_domain: str
    service: str

    def __post_init__(self) -> None:
        check_trust_domain(self.trust_domain)
        check_service(self.service)

    @classmethod
    def for_service(cls, trust_domain: str, service: str) -> SpiffeId:
        return cls(trust_domain, service)

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """Parse ``spiffe://<td>/svc/<service>`` strictly (see the module rules)."""
        if not isinstance(uri, str):
            raise InvalidSpiffeId(f"a SPIFFE id is a string, got {type(uri).__name__}")
        if not uri.startswith(SCHEME):
            raise InvalidSpiffeId(f"{uri!r} does not start with {SCHEME!r}")
        rest = uri[len(SCHEME) :]
        for bad in "?#%@:":
            if bad in rest:
                raise InvalidSpiffeId(f"{uri!r} contains {bad!r}, which SPIFFE ids must not")
        trust_domain, slash, path = rest.partition("/")
        if not slash:
            raise InvalidSpiffeId(f"{uri!r} has no path; expected spiffe://<td>/svc/<service>")
        check_trust_domain(trust_domain)
        path = "/" + path
        if not path.startswith(SERVICE_PREFIX):
            raise InvalidSpiffeId(f"{uri!r}: the path must be /svc/<service>, got {path!r}")
        return cls(trust_domain, check_service(path[len(SERVICE_PREFIX) :]))

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}{SERVICE_PREFIX}{self.service}"
