"""gRPC channel arguments for the clients (IQAClient, AsyncIQAClient, the Locust users).

Imports only tritonclient's synchronous gRPC client, so the Locust users (gevent) can use it without
grpc's asyncio layer.
"""

from __future__ import annotations

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
