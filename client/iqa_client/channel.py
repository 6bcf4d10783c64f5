"""gRPC channel arguments for the clients (IQAClient, AsyncIQAClient, the Locust users), the server
addresses people write, and what answers at one when gRPC does not.

Imports only tritonclient's synchronous gRPC client, so the Locust users (gevent) can use it without
grpc's asyncio layer.
"""

from __future__ import annotations

import re
import socket
import ssl as ssl_module
from collections.abc import Iterable

import tritonclient.grpc as grpcclient

ChannelOptions = Iterable[tuple[str, object]]
# The longest wait between two connection attempts to a server that cannot be reached (gRPC's default is
# 120 s): at most one refused TCP connection a second per client while a server is down.
RECONNECT_BACKOFF_MS = 1000


def channel_arguments(options: ChannelOptions | None) -> list[tuple[str, object]]:
    """gRPC channel arguments: tritonclient's own defaults and a reconnect backoff capped at
    RECONNECT_BACKOFF_MS, then `options` (a key given there wins).

    tritonclient replaces all of its defaults (unlimited message sizes, keepalive) as soon as it is
    given any channel argument; this keeps them and adds the caller's, e.g. client-side load
    balancing over every replica behind a headless Kubernetes Service (docker/README.md):
    url "dns:///iqa-triton-grpc.iqa.svc:8001", options [("grpc.lb_policy_name", "round_robin")].
    Names and values: https://grpc.github.io/grpc/core/group__grpc__arg__keys.html
    """
    keepalive = grpcclient.KeepAliveOptions()
    merged = {
        # gRPC waits longer and longer between reconnections to a server that went away (1 s, x1.6, up
        # to 120 s), and every channel to one address shares that wait: after a 40 s restart the first
        # calls failed for seconds once the server was back. Capped, a client reconnects within about
        # a second of its return (the retries wait for it: client.RetryPolicy).
        "grpc.max_reconnect_backoff_ms": RECONNECT_BACKOFF_MS,
        "grpc.max_send_message_length": grpcclient.MAX_GRPC_MESSAGE_SIZE,
        "grpc.max_receive_message_length": grpcclient.MAX_GRPC_MESSAGE_SIZE,
        "grpc.keepalive_time_ms": keepalive.keepalive_time_ms,
        "grpc.keepalive_timeout_ms": keepalive.keepalive_timeout_ms,
        "grpc.keepalive_permit_without_calls": keepalive.keepalive_permit_without_calls,
        "grpc.http2.max_pings_without_data": keepalive.http2_max_pings_without_data,
    }
    merged.update(dict(options or ()))
    return list(merged.items())


# --- what users write after --url, and what answers there when nothing speaks gRPC -------------------

DEFAULT_GRPC_PORT = 8001  # Triton's gRPC port unless it was started with another (HTTP: 8000)
# gRPC's own target syntax (name resolvers), passed on as it is: "dns:///host:8001" for load balancing.
_GRPC_TARGETS = re.compile(r"^(dns|ipv4|ipv6|unix|unix-abstract|vsock|xds):")
_SCHEMES = {"grpc": False, "http": False, "grpcs": True, "https": True}  # scheme -> TLS


def grpc_target(url: str, ssl: bool = False) -> tuple[str, bool]:
    """(the gRPC target, TLS on?) for a server address as people write it.

    "host:port" and gRPC's own targets ("dns:///host:8001", "unix:/path") are used as they are; a bare host
    or "[IPv6]" gets Triton's gRPC port 8001 (gRPC alone would try 443); "grpc://" and "http://" are
    dropped, "grpcs://" and "https://" also turn TLS on. Raises ValueError naming the fix for anything
    else: a path after the port, another scheme, a port that is no number.
    """
    text = url.strip()
    if _GRPC_TARGETS.match(text):
        return text, ssl
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme.lower() not in _SCHEMES:
            raise ValueError(f"{url!r}: a gRPC address is host:port (or grpc://, http://, https://host:port), "
                             f"not {scheme}://")
        ssl = ssl or _SCHEMES[scheme.lower()]
        text = rest
    host_port, slash, path = text.partition("/")
    if path.strip("/"):
        raise ValueError(f"{url!r}: a gRPC address has no path: write {host_port or 'host:port'}")
    if not host_port:
        raise ValueError(f"{url!r}: no host: write host:port, e.g. 127.0.0.1:{DEFAULT_GRPC_PORT}")
    if host_port.startswith("["):  # [IPv6] or [IPv6]:port
        host, _, port = host_port[1:].partition("]")
        port = port.removeprefix(":")
        host = f"[{host}]"
    elif host_port.count(":") > 1:  # a bare IPv6 address
        host, port = f"[{host_port}]", ""
    else:
        host, _, port = host_port.partition(":")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{url!r}: the port must be a number from 1 to 65535, got {port!r}")
    return f"{host}:{port or DEFAULT_GRPC_PORT}", ssl


def diagnose(target: str, ssl: bool, timeout_s: float = 2.0) -> str | None:
    """When a gRPC connection to host:port failed: what does answer there, as a hint naming the fix (or None).

    One TCP connection sends an HTTP/1.1 request: Triton's HTTP port answers it in HTTP/1.1, a plaintext gRPC
    port with an HTTP/2 SETTINGS frame; else a TLS handshake tells a TLS-only port.
    """
    match = re.fullmatch(r"\[?([^\[\]]+?)\]?:(\d+)", target)
    if not match or _GRPC_TARGETS.match(target):
        return None
    host, port = match[1], int(match[2])
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except ConnectionRefusedError:
        return (f"nothing listens on {target}: is the server running there? (Triton's gRPC port is "
                f"{DEFAULT_GRPC_PORT} unless it was started with another)")
    except OSError:
        return None
    with sock:
        try:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: " + host.encode() + b"\r\nConnection: close\r\n\r\n")
            first = sock.recv(16)
        except OSError:
            first = b""
    if first.startswith(b"HTTP/"):
        return (f"{target} answers HTTP/1.1, not gRPC: that is Triton's HTTP port (8000 by default); give its "
                f"gRPC port ({DEFAULT_GRPC_PORT} by default)")
    if len(first) >= 9 and first[3] == 0x04:  # an HTTP/2 SETTINGS frame: plaintext gRPC
        return f"{target} speaks plaintext gRPC, not TLS: connect without TLS (no --tls; ssl=False)" if ssl else None
    if not ssl and _speaks_tls(host, port, timeout_s):
        return (f"{target} speaks TLS: connect with TLS (--tls, and --ca-cert PEM for a private CA; ssl=True and "
                "root_certificates= in the library)")
    return None


def _speaks_tls(host: str, port: int, timeout_s: float) -> bool:
    context = ssl_module.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl_module.CERT_NONE  # only: is it TLS at all?
    context.set_alpn_protocols(["h2"])
    try:
        with context.wrap_socket(socket.create_connection((host, port), timeout=timeout_s), server_hostname=host):
            return True
    except (OSError, ssl_module.SSLError):
        return False
