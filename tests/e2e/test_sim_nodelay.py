"""TCP_NODELAY on the simulator's connections, in both flavors.

vLLM serves through uvloop and Ollama through Go's net package; both set TCP_NODELAY on every
accepted connection, so a response is not held back waiting for the client's delayed ACK.
asyncio only does it when the listening socket was created with proto IPPROTO_TCP
(asyncio/base_events.py _set_nodelay), which server.bind_socket now does.
"""

from __future__ import annotations

import socket
import statistics
import time

import pytest

from msmall.httpclient import new_client
from msmall.simulator import SimulatorConfig, SimulatorThread
from msmall.simulator.server import bind_socket

MODELS = {"vllm": "mistral-small-3.1", "ollama": "mistral-small3.1:24b-instruct-2503-q4_K_M"}


def test_bound_socket_is_tcp_so_asyncio_sets_nodelay() -> None:
    sock = bind_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


@pytest.mark.parametrize("flavor", ["vllm", "ollama"])
def test_accepted_connection_has_nodelay_and_kept_alive_requests_are_fast(flavor: str) -> None:
    config = SimulatorConfig(flavor=flavor, port=0, quiet=True, pulled=True)
    with SimulatorThread(config) as sim, new_client(sim.base_url) as c:
        body = {"model": MODELS[flavor], "messages": [{"role": "user", "content": "Say 'OK'"}]}
        assert c.post("/v1/chat/completions", json=body).status_code == 200
        server = sim._runner.server
        assert server is not None
        flags = [
            conn.transport.get_extra_info("socket").getsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY
            )
            for conn in list(server.server_state.connections)
        ]
        assert flags and all(flags), flags
        # Without no-delay every kept-alive request took 44-52 ms (the client's delayed ACK).
        samples = []
        for _ in range(15):
            started = time.perf_counter()
            assert c.post("/v1/chat/completions", json=body).status_code == 200
            samples.append(time.perf_counter() - started)
        assert statistics.median(samples) < 0.03, samples
