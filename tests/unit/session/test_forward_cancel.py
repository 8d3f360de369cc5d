"""A client's cancel connection closes only once the database has the cancel (found by asyncpg's
suite through `make compat`): PostgreSQL closes it only after signalling the backend, and clients
wait for that close before their next statement, which a late cancel would hit instead."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

from proxy.session.context import ProxyContext
from proxy.session.opening import forward_cancel
from proxy.session.registry import SessionRegistry
from proxy.wire import CancelRequest
from tests.fixtures.native_mode import pure_only

# Compiled, forward_cancel checks that the registry handed it a Session; real cancels through a
# real session: tests/integration/adversarial/test_admission.py, replicas/test_cancel_*.py.
pytestmark = pure_only("a stub stands in for the Session")


@dataclass
class StubSession:
    sent: asyncio.Future[bool]
    calls: list[str] = field(default_factory=list)
    session_id: str = "s1"
    cancel_process_id: int = 4242
    cancel_secret: bytes = b""

    def cancel_running_query(self) -> asyncio.Future[bool]:
        self.calls.append("cancel")
        return self.sent


def context_with(session: StubSession) -> tuple[ProxyContext, CancelRequest]:
    registry: SessionRegistry[Any] = SessionRegistry()
    session.cancel_secret = registry.new_cancel_key(session.cancel_process_id)
    registry.add(session)
    ctx = cast(ProxyContext, type("Ctx", (), {"registry": registry, "cancel_elsewhere": None}))
    return ctx, CancelRequest(session.cancel_process_id, session.cancel_secret)


def test_forwarding_waits_until_the_database_has_the_cancel() -> None:
    async def main() -> None:
        session = StubSession(asyncio.get_running_loop().create_future())
        ctx, request = context_with(session)
        forwarding = asyncio.create_task(forward_cancel(request, ctx))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert session.calls == ["cancel"]
        assert not forwarding.done()  # the client's connection stays open meanwhile
        session.sent.set_result(True)
        await asyncio.wait_for(forwarding, 1)

    asyncio.run(main())


def test_a_client_that_leaves_does_not_stop_the_cancel() -> None:
    async def main() -> None:
        session = StubSession(asyncio.get_running_loop().create_future())
        ctx, request = context_with(session)
        forwarding = asyncio.create_task(forward_cancel(request, ctx))
        await asyncio.sleep(0)
        forwarding.cancel()  # the login timeout, or shutdown
        await asyncio.gather(forwarding, return_exceptions=True)
        assert not session.sent.cancelled()  # shielded: the cancel upstream goes on
        session.sent.set_result(True)

    asyncio.run(main())


def test_a_failed_cancel_upstream_still_closes_quietly() -> None:
    async def main() -> None:
        session = StubSession(asyncio.get_running_loop().create_future())
        ctx, request = context_with(session)
        session.sent.set_exception(OSError("refused"))
        await asyncio.wait_for(forward_cancel(request, ctx), 1)

    asyncio.run(main())
