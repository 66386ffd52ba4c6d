"""Why a gRPC server could not be reached: TLS mistakes named as TLS mistakes.

gRPC only says that no connection became ready. When that happens, :func:`diagnose_unreachable`
looks at the address with Python's own sockets and TLS: nothing listening, a TLS
server reached in plaintext, a plaintext server reached with TLS, or a certificate the
client's file does not trust. Each becomes one line that says what to change.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from dnntune.errors import DnntuneError

PROBE_TIMEOUT_S = 2.0


def read_certificate(path: str, flag: str = "--tls-cert") -> bytes:
    """The bytes of a PEM certificate file, refused in one line if unreadable or not PEM."""
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise DnntuneError(f"{flag} {path}: cannot read TLS certificate "
                           f"({exc.strerror})") from None
    try:
        ssl.create_default_context(cadata=pem.decode("ascii"))
    except (UnicodeDecodeError, ssl.SSLError, ValueError):
        raise DnntuneError(f"{flag} {path}: not a PEM certificate (expected text with a "
                           "-----BEGIN CERTIFICATE----- block)") from None
    return pem


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _speaks_tls(host: str, port: int) -> bool | None:
    """``True`` if a TLS handshake (no verification) succeeds, ``False`` if it fails,
    ``None`` if nothing accepts a connection."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        sock = socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S)
    except OSError:
        return None
    try:
        with context.wrap_socket(sock, server_hostname=host):
            return True
    except OSError:  # ssl.SSLError, a reset or a timeout: no TLS server there
        return False
    finally:
        sock.close()


def _trust_problem(host: str, port: int, cert: str, server_name: str) -> str | None:
    """Why the server's certificate is not trusted by ``cert`` (``None`` if it is)."""
    try:
        context = ssl.create_default_context(cafile=cert)
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S) as sock, \
                context.wrap_socket(sock, server_hostname=server_name):
            return None
    except ssl.SSLCertVerificationError as exc:
        return exc.verify_message or str(exc)
    except OSError:
        return None


def diagnose_unreachable(address: str, tls_cert: str | None, waited_s: float,
                         server_name: str | None = None) -> DnntuneError:
    """One line saying why no gRPC connection to ``address`` became ready
    (``server_name``: the name the certificate must carry, if not the address's host)."""
    generic = DnntuneError(f"cannot reach {address}: no gRPC server answered within "
                           f"{waited_s:g} s")
    try:
        host, port = _split(address)
    except ValueError:
        return generic
    tls = _speaks_tls(host, port)
    if tls is None:
        return generic
    if tls and not tls_cert:
        return DnntuneError(f"cannot reach {address}: the server speaks TLS but this client "
                            "does not; pass the server's certificate (or its CA) with "
                            "--tls-cert")
    if not tls and tls_cert:
        return DnntuneError(f"cannot reach {address}: the server does not speak TLS (a "
                            f"plaintext server?) but this client does (--tls-cert {tls_cert});"
                            " drop --tls-cert, or start the server with --tls-cert/--tls-key")
    if tls and tls_cert:
        problem = _trust_problem(host, port, tls_cert, server_name or host)
        if problem:
            return DnntuneError(f"cannot reach {address}: TLS certificate check failed "
                                f"({problem}); --tls-cert {tls_cert} is not the server's "
                                "certificate or its CA, or it is not issued for this host "
                                "name")
    return generic
