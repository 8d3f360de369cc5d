"""A peer closed after our last message: the other side must be able to read that message.

A socket closed while input waits unread in it answers with a reset, and the client's kernel then
drops what it had received but not yet read: a FATAL sent just before would be lost. These run
real loopback sockets: the client's bytes wait unread on our side (reading paused), we write the
last message and close.
"""

from __future__ import annotations

import asyncio
import socket

from proxy.net.peer import Peer

LAST_MESSAGE = b"E\x00\x00\x00\x05FATAL"


async def _closed_with_unread_input(graceful: bool) -> bytes:
    """What a client receives when our peer, with the client's query still unread, writes its
    last message and closes (gracefully or not)."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[Peer] = loop.create_future()

    def make_peer() -> Peer:
        peer = Peer("client")
        loop.call_soon(accepted.set_result, peer)
        return peer

    server = await loop.create_server(make_peer, "127.0.0.1", 0)
    client = socket.create_connection(server.sockets[0].getsockname()[:2], timeout=5)
    try:
        peer = await accepted
        peer.pause_reading()
        client.sendall(b"Q\x00\x00\x00\x0dSELECT 1\x00")  # left unread on our side
        await asyncio.sleep(0.05)  # let it arrive: a setup step, nothing is timed
        peer.write(LAST_MESSAGE)
        if graceful:
            peer.close_after_reading(linger=1.0)
        else:
            peer.close()
        await asyncio.sleep(0.1)
        return await loop.run_in_executor(None, _read_all, client)
    finally:
        client.close()
        server.close()
        await server.wait_closed()


def _read_all(client: socket.socket) -> bytes:
    received = b""
    try:
        while chunk := client.recv(4096):
            received += chunk
    except ConnectionResetError:
        received += b"<reset>"
    return received


def test_the_last_message_reaches_a_client_whose_input_was_unread() -> None:
    assert asyncio.run(_closed_with_unread_input(graceful=True)) == LAST_MESSAGE


def test_a_plain_close_with_unread_input_resets_the_connection() -> None:
    """Why the graceful close exists: a reset, before which the client may or may not have
    read the message (it depends on when the reset arrives)."""
    assert asyncio.run(_closed_with_unread_input(graceful=False)).endswith(b"<reset>")


def test_a_client_that_keeps_its_side_open_is_closed_after_the_linger() -> None:
    async def scenario() -> bool:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[Peer] = loop.create_future()
        server = await loop.create_server(lambda: _accepting(accepted), "127.0.0.1", 0)
        client = socket.create_connection(server.sockets[0].getsockname()[:2], timeout=5)
        try:
            peer = await accepted
            peer.close_after_reading(linger=0.2)
            client.sendall(b"more")  # read and dropped while lingering
            await asyncio.wait_for(peer.wait_closed(), 5)
            return peer.is_closed
        finally:
            client.close()
            server.close()
            await server.wait_closed()

    assert asyncio.run(scenario())


def _accepting(accepted: asyncio.Future[Peer]) -> Peer:
    peer = Peer("client")
    asyncio.get_running_loop().call_soon(accepted.set_result, peer)
    return peer
