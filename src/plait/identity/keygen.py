"""Key and CSR generation in a short-lived child process (the proxy never loads cryptography).

Like Istio's agent making keys outside Envoy: making an ECDSA P-256 key and signing a CSR
needs ``cryptography`` (about 9 MB resident for the life of the process), while the proxy
needs it only for a moment per issue or renewal. :func:`make_csr` therefore runs
``python -P -m plait.identity.keygen`` (the same interpreter, ``sys.executable``), which

1. reads one JSON request from its stdin: ``{"spiffe_id": "spiffe://td/svc/name",
   "key_pem": "<PEM>" or null}`` (null: make a new key);
2. loads the key with OpenSSL (refusing anything but an unencrypted P-256 key) or makes
   one, and builds the CSR (:func:`plait.identity.csr.build_csr`);
3. writes one JSON answer to its stdout: ``{"key_pem", "public_key" (SubjectPublicKeyInfo
   DER, base64), "csr_pem"}``, or ``{"error": "..."}`` with exit status 1; and exits.

Private keys travel only over the child's stdin/stdout pipes: never in argv, the
environment or a file (the parent stores a new key itself, 0600: :mod:`plait.identity.keys`).
A child that fails, says something that is not the answer above, or takes longer than
``timeout`` (it is then killed) raises :class:`KeygenError` with the reason.

``-P`` keeps the working directory off ``sys.path``, so a stray ``plait`` directory
there cannot stand in for the package.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sys
from dataclasses import dataclass
from typing import Any

from plait.identity.pem_keys import DerError, pem_blocks, read_private_key

MODULE = "plait.identity.keygen"
TIMEOUT = 30.0
MAX_REQUEST = 64 * 1024


class KeygenError(Exception):
    """Making the key or the CSR failed; the message says why."""


@dataclass(frozen=True)
class KeygenResult:
    key_pem: bytes  # the key the CSR is signed with (the one given, or a new one)
    spki: bytes  # its public key, SubjectPublicKeyInfo DER
    csr_pem: bytes
    created: bool  # True when the child made a new key


def child_command() -> list[str]:
    return [sys.executable, "-P", "-m", MODULE]


async def make_csr(
    spiffe_id: str, key_pem: bytes | None, *, timeout: float = TIMEOUT
) -> KeygenResult:
    """A CSR for ``spiffe_id`` signed with ``key_pem`` (None: a new key), made by a child."""
    request = json.dumps(
        {"spiffe_id": spiffe_id, "key_pem": key_pem.decode("ascii") if key_pem else None}
    ).encode()
    try:
        proc = await asyncio.create_subprocess_exec(
            *child_command(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise KeygenError(f"cannot start the key child ({sys.executable}): {exc}") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(request), timeout)
    except TimeoutError:
        raise KeygenError(f"the key child did not answer within {timeout:g}s") from None
    finally:
        if proc.returncode is None:  # timed out or cancelled: the child goes too
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(proc.wait(), 5.0)
    return parse_answer(proc.returncode, out, err, key_pem)


def parse_answer(
    returncode: int | None, out: bytes, err: bytes, key_pem: bytes | None
) -> KeygenResult:
    """Check the child's answer (everything in it) and return it."""
    try:
        answer = json.loads(out) if out.strip() else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        tail = err.decode("utf-8", "replace").strip().splitlines()[-3:]
        why = " / ".join(tail) or "no answer"
        raise KeygenError(f"the key child failed (exit status {returncode}): {why}")
    if "error" in answer or returncode != 0:
        raise KeygenError(f"the key child failed: {answer.get('error', returncode)}")
    try:
        new_pem = str(answer["key_pem"]).encode("ascii")
        spki = base64.b64decode(str(answer["public_key"]), validate=True)
        csr_pem = str(answer["csr_pem"]).encode("ascii")
        info = read_private_key(new_pem, "the key from the key child")
        if len(pem_blocks(csr_pem, "CERTIFICATE REQUEST")) != 1:
            raise DerError("not one PEM CERTIFICATE REQUEST")
    except (KeyError, ValueError, UnicodeEncodeError) as exc:
        raise KeygenError(f"the key child answered something unexpected: {exc}") from None
    if info.spki is not None and info.spki != spki:
        raise KeygenError("the key child answered a public key that is not its key's")
    if key_pem is not None and new_pem != key_pem:
        raise KeygenError("the key child answered with another key than the one given")
    return KeygenResult(new_pem, spki, csr_pem, created=key_pem is None)


# -- the child ------------------------------------------------------------------------


def answer(request: Any) -> dict[str, str]:
    """The child's work: load or make the key, build the CSR. Raises ValueError."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from plait.ca.spiffe import SpiffeId
    from plait.identity.csr import build_csr

    if not isinstance(request, dict):
        raise ValueError("the request is not a JSON object")
    spiffe_id = request.get("spiffe_id")
    if not isinstance(spiffe_id, str):
        raise ValueError("spiffe_id is not a string")
    spiffe = SpiffeId.parse(spiffe_id)
    given = request.get("key_pem")
    if given is None:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    else:
        if not isinstance(given, str):
            raise ValueError("key_pem is not a string")
        pem = given.encode("ascii")
        try:
            loaded = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not a PEM private key: {exc}") from None
        if not isinstance(loaded, ec.EllipticCurvePrivateKey) or loaded.curve.name != "secp256r1":
            raise ValueError("expected an ECDSA P-256 key")
        key = loaded
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {
        "key_pem": pem.decode("ascii"),
        "public_key": base64.b64encode(spki).decode("ascii"),
        "csr_pem": build_csr(key, spiffe).decode("ascii"),
    }


def main() -> int:
    try:
        data = sys.stdin.buffer.read(MAX_REQUEST + 1)
        if len(data) > MAX_REQUEST:
            raise ValueError(f"the request is larger than {MAX_REQUEST} bytes")
        result: dict[str, str] = answer(json.loads(data))
    except Exception as exc:  # every failure is an answer with its reason
        sys.stdout.write(json.dumps({"error": str(exc) or type(exc).__name__}))
        sys.stdout.flush()
        return 1
    sys.stdout.write(json.dumps(result))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
