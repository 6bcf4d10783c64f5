"""gRPC channel options reach the channel of both clients, and tritonclient's defaults stay (real server)."""

from __future__ import annotations

import asyncio

import pytest

from iqa_client import AsyncIQAClient, IQAClient, IQAError, RetryPolicy
from iqa_client.client import channel_arguments
from tests.conftest import DATA

PHOTO = DATA / "sheep.jpg"
NO_RETRY = RetryPolicy(attempts=1)


def test_a_channel_option_takes_effect_in_the_sync_client(triton):
    # A send limit below the photo's size: gRPC itself refuses the call, so the option reached the channel.
    with IQAClient(triton.grpc_url, connect=False, retry=NO_RETRY, timeout=20,
                   channel_options=[("grpc.max_send_message_length", 1024)]) as limited:
        with pytest.raises(IQAError, match="larger than max"):
            limited.score(PHOTO)


def test_a_channel_option_takes_effect_in_the_async_client(triton):
    async def score():
        async with AsyncIQAClient(triton.grpc_url, retry=NO_RETRY, timeout=20,
                                  channel_options=[("grpc.max_send_message_length", 1024)]) as limited:
            return await limited.score(PHOTO)

    with pytest.raises(IQAError, match="larger than max"):
        asyncio.run(score())


def test_client_side_round_robin_over_a_target_list_scores(triton):
    """The headless-Service set-up of docker/README.md: a target that resolves to several addresses and the
    round_robin policy (here both addresses are the test server)."""
    port = triton.grpc_url.rsplit(":", 1)[1]
    with IQAClient(f"ipv4:127.0.0.1:{port},127.0.0.1:{port}", timeout=60,
                   channel_options=[("grpc.lb_policy_name", "round_robin")]) as balanced:
        scores = balanced.score(PHOTO)
    assert 0.0 <= scores.blur <= 1.0


def test_the_callers_options_are_added_to_tritonclients_defaults():
    merged = dict(channel_arguments([("grpc.lb_policy_name", "round_robin"), ("grpc.keepalive_time_ms", 5000)]))
    assert merged["grpc.lb_policy_name"] == "round_robin"
    assert merged["grpc.keepalive_time_ms"] == 5000  # the caller's value wins
    assert merged["grpc.max_send_message_length"] == merged["grpc.max_receive_message_length"] == 2**31 - 1
