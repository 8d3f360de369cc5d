"""Sockets and TLS for both sides of a session: the asyncio peer, SSL contexts, certificates."""
