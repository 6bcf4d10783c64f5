"""Clients that outlive a server restart (a real tritonserver stopped and started again on the same ports).

While a server is down, gRPC waits longer and longer between its attempts to reconnect (1 s, x1.6, up
to 120 s by default, shared by every channel to that address): a client that kept calling through a
40 s restart failed for seconds after the server was back. The clients cap that wait and, between
retries, wait for the connection within the call's timeout.
"""

from __future__ import annotations

import asyncio
import threading
import time

from iqa_client import AsyncIQAClient, IQAClient, IQATimeoutError, ModelError, Scores, ServerUnreachableError
from tests.conftest import DATA, serve

PHOTO = DATA / "sheep.jpg"
# Long enough for gRPC's default backoff to grow past 10 s (1 + 1.6 + 2.6 + 4.1 + 6.6 s of failed
# attempts), short enough to keep the test cheap; the restart itself adds its start-up time.
DOWN_S = 16


# What a call still gets when its timeout ends just as the server comes back: no answer in the time
# left, or the refusal of a model that is being loaded (NOT_FOUND "has no available versions").
SERVER_COMING_BACK = (IQATimeoutError, ModelError)


def same(a: Scores, b: Scores) -> bool:
    return all(abs(x - y) <= 1e-4 for x, y in zip(a.to_dict().values(), b.to_dict().values()))


def test_a_call_made_after_a_server_restart_succeeds_within_its_timeout(tmp_path_factory):
    server = serve(tmp_path_factory, "restart")
    with server:
        sync = IQAClient(server.grpc_url, timeout=10)
        aclient = AsyncIQAClient(server.grpc_url, timeout=10)
        before = sync.score(PHOTO)

    # The clients live in a thread of their own, as in a service under traffic; the server is started
    # again from this thread (the launcher's server gets SIGTERM when the thread that started it ends).
    ready, seen = threading.Event(), {}

    def call_through_the_restart():
        loop = asyncio.new_event_loop()  # one loop for the async client's whole life
        try:
            # Down: each call fails with the documented error once its timeout is spent (not within a
            # second: the retries wait for the server to come back).
            seen["failures"] = seen["early"] = 0
            while not ready.is_set():
                started = time.monotonic()
                try:
                    sync.score(PHOTO, timeout=2)
                    continue  # the server came back during this call's wait
                except ServerUnreachableError:
                    seen["failures"] += 1
                    seen["early"] += time.monotonic() - started < 1.5
                except SERVER_COMING_BACK:
                    pass
                try:
                    loop.run_until_complete(aclient.score(PHOTO, timeout=2))
                except (ServerUnreachableError, *SERVER_COMING_BACK):
                    pass
            # Back: the first call of each client succeeds. (Before, it failed at once: the channel was
            # still waiting out gRPC's backoff. Its duration is reported, not bounded: an inference took
            # 3-14 s on the loaded 2-core machine; reconnecting takes about a second of it.)
            started = time.monotonic()
            seen["sync"] = sync.score(PHOTO, timeout=60), time.monotonic() - started
            started = time.monotonic()
            seen["async"] = loop.run_until_complete(aclient.score(PHOTO, timeout=60)), time.monotonic() - started
        except Exception as err:  # noqa: BLE001 - reported by the test below
            seen["error"] = err
        finally:
            loop.run_until_complete(aclient.close())
            loop.close()

    caller = threading.Thread(target=call_through_the_restart)
    caller.start()
    try:
        time.sleep(DOWN_S)
        server.start()
        server.wait_ready()
    finally:
        ready.set()
        caller.join()
    try:
        assert "error" not in seen, seen
        assert seen["failures"] >= 3 and seen["early"] == 0, seen
        for client in ("sync", "async"):
            scores, seconds = seen[client]
            assert same(scores, before), (client, scores, f"{seconds:.1f} s")
    finally:
        server.stop()
        sync.close()
