"""Ports picked for a server to bind later: free, and outside the kernel's ephemeral range, from
which outgoing connections take their local ports (one could take the port in between)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from proxy.demo import cluster
from proxy.demo.cluster import PORT_FLOOR, free_loopback_port


def test_a_picked_port_is_free_and_below_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(20):
        port = free_loopback_port()
        assert PORT_FLOOR <= port < low
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free: binding it works


def test_without_a_readable_range_any_free_port_is_taken(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(cluster, "EPHEMERAL_RANGE", tmp_path / "missing")
    port = free_loopback_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
