"""The CA's audit log: one JSON object per line, appended, fsynced line by line.

Every issuance and every refusal is recorded, and so are token creation and revocation
and each root rotation step. A line always has ``time`` (UTC, ISO 8601) and ``event``;
the other keys depend on the event:

=================  =========================================================================
event              keys
=================  =========================================================================
``issued``         service, spiffe_id, serial (hex), not_after, issuer, auth, token_id, node, peer
``refused``        service, reason, auth, token_id, node, peer
``token_created``  token_id, service, expires_at
``token_revoked``  token_id, service
``rotation``       step (begin/switch/retire), generation, bundle_version
=================  =========================================================================

``auth`` is how the caller proved it may have the identity: ``token``, ``certificate``
(renewal with the current certificate) or ``control`` (the control plane's own). Keys
whose value is None are left out. :func:`audit_line` is pure; :class:`AuditLog` appends
(``O_APPEND``, file mode 0600) and fsyncs before returning, so a caller that hands out a
certificate after :meth:`AuditLog.record` returned knows the line is on disk. A write
that fails raises, and the caller must then not hand out the certificate.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Any

LOG_MODE = 0o600


def audit_line(event: str, time: datetime, **fields: Any) -> str:
    """One audit line (with its newline); keys sorted, None values dropped."""
    record: dict[str, Any] = {"time": time.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "event": event}
    record.update({k: v for k, v in fields.items() if v is not None})
    return json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"


class AuditLog:
    def __init__(self, path: str) -> None:
        self.path = path

    def record(self, event: str, time: datetime, **fields: Any) -> None:
        """Append one line and fsync it. Raises OSError if it could not be written."""
        data = audit_line(event, time, **fields).encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_MODE)
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(f"{self.path}: short write ({written} of {len(data)} bytes)")
            os.fsync(fd)
        finally:
            os.close(fd)
