"""What pgwarden would post in Slack at a step of the demo, printed since Slack is not configured.

The message is built by `slack_messages.request_message`, the code that builds the real one,
from the request as the running server stored it (its state file, read-only) and the demo's
policy; then rendered as plain text. So the printout shows what a configured Slack app would get.
"""

from __future__ import annotations

from pathlib import Path

from proxy.grants.requests import RequestId
from proxy.grants.store import SqliteStore
from proxy.notify.slack_messages import plain_text, request_message
from proxy.policy.policy_file import load_policy

LABEL = "Slack (not configured; this is what would be posted to #channel):"


def slack_preview(directory: Path, request_id: str) -> str:
    """The label and the message showing `request_id`, indented, for the demo to print."""
    policy = load_policy(directory / "policy.yaml")
    store = SqliteStore(directory / "state.db", create=False)
    try:
        with store.read() as tx:
            request = tx.get_request(RequestId(request_id))
            approvals = tx.approvals(RequestId(request_id))
    finally:
        store.close()
    if request is None:
        return f"{LABEL}\n    (request {request_id} is not in the state file)"
    _, blocks = request_message(request, approvals, policy, link=f"request {request_id}")
    lines = plain_text(blocks).splitlines()
    return "\n".join([LABEL, *(f"    {line}" for line in lines)])
