"""Workload identity: the host side of plait's certificates (DESIGN.md, Conventions).

Every local service gets its own X.509-SVID: an ECDSA P-256 key made *on the host*
(:mod:`~plait.identity.keys`, written 0600, never sent anywhere), a CSR carrying the
service's SPIFFE id as its only URI SAN (:mod:`~plait.identity.csr`), and a certificate
signed by the control plane's CA over HTTPS (``POST /v1/ca/sign``, docs/security.md).
The key and the CSRs are made by a short-lived child process
(:mod:`~plait.identity.keygen`), and certificates and key files are read by pure DER
readers (:mod:`~plait.identity.x509_reader`, :mod:`~plait.identity.pem_keys`), so the
proxy process never imports cryptography.

:class:`~plait.identity.manager.IdentityManager` keeps one identity current: it asks for
the first certificate, renews at about half-life (:mod:`~plait.identity.renewal`, pure:
schedule with jitter, the expiry alarm, the backoff while the CA cannot be reached), keeps
serving the current certificate while the CA is down, and tells its owner on every change
(the proxy swaps its TLS contexts; ``plait identity`` rewrites its files through
:mod:`~plait.identity.files`, atomically).

First contact with the CA (how the manager learns which certificate the control plane's
HTTPS endpoint must present) is explained in :mod:`~plait.identity.manager`.
"""
