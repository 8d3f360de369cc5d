"""`listen_problem`: whether the listen addresses are free, asked before a server creates
anything; each answer names the address and the fix."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from proxy.net.listen import listen_problem


@pytest.fixture
def occupied() -> Iterator[int]:
    """A loopback port someone listens on."""
    with socket.create_server(("127.0.0.1", 0)) as holder:
        yield int(holder.getsockname()[1])


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def test_free_addresses_have_no_problem() -> None:
    assert listen_problem([("proxy.listen", "127.0.0.1", free_port())]) is None


def test_port_zero_is_always_free() -> None:
    assert listen_problem([("api.listen", "127.0.0.1", 0)]) is None


def test_a_port_someone_listens_on_is_named_with_the_fix(occupied: int) -> None:
    problem = listen_problem(
        [("proxy.listen", "127.0.0.1", 0), ("api.listen", "127.0.0.1", occupied)]
    )
    assert problem == (
        "api.listen",
        f"127.0.0.1:{occupied} is already in use by another process; "
        "stop it or choose another port",
    )


def test_two_of_our_own_addresses_that_overlap_are_caught() -> None:
    port = free_port()
    everywhere, loopback = ("proxy.listen", "0.0.0.0", port), ("api.listen", "127.0.0.1", port)
    problem = listen_problem([everywhere, loopback])
    assert problem is not None
    assert problem[0] == "api.listen"


def test_an_address_of_another_host_is_named() -> None:
    port = free_port()
    problem = listen_problem([("proxy.listen", "192.0.2.1", port)])  # TEST-NET-1: nobody's
    assert problem == (
        "proxy.listen",
        f"192.0.2.1:{port} is not an address of this host; use one of its addresses, or 0.0.0.0",
    )


def test_the_check_lets_go_of_the_port() -> None:
    port = free_port()
    assert listen_problem([("proxy.listen", "127.0.0.1", port)]) is None
    with socket.create_server(("127.0.0.1", port)):  # would raise if the check still held it
        pass
