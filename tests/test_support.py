"""The test plumbing's own promises: ports a server can still bind when it starts late."""

from __future__ import annotations

import socket

import pytest
from tests.support import LOWEST_TEST_PORT, ephemeral_port_range, free_port, worker_port_range


def test_free_ports_come_from_below_the_ephemeral_range() -> None:
    low, _ = ephemeral_port_range()
    if low - LOWEST_TEST_PORT < 100:
        pytest.skip(f"the ephemeral range starts at {low}: no room below it")
    ports = [free_port() for _ in range(20)]
    assert all(port in worker_port_range() for port in ports)
    assert all(LOWEST_TEST_PORT <= port < low for port in ports)
    assert len(set(ports)) == len(ports), "a port was handed out twice"


def test_a_free_port_can_be_bound_as_a_listener() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()


def test_each_worker_draws_from_its_own_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    if ephemeral_port_range()[0] - LOWEST_TEST_PORT < 400:
        pytest.skip("too little room below the ephemeral range for four slices")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "4")
    slices = []
    for index in range(4):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{index}")
        slices.append(set(worker_port_range()))
    for index, mine in enumerate(slices):
        for other in slices[index + 1 :]:
            assert not mine & other
