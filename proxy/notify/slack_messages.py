"""What pgwarden says in Slack, as Block Kit values: a request's message, the deny modal, DMs.

Pure functions of a request, its approvals and the policy, so that the message rendered for the
tenth event about a request is the whole truth as the store has it then (an update replaces the
message; a retried update sends the same thing again). Every text people wrote (reasons,
comments, names) is escaped (`events.slack_escape`): a reason cannot mention `<!channel>`.

A pending request whose rule has `chat: allow` gets Approve and Deny buttons, each with
`action_id` `approve` / `deny` and the request id as `value`; under `chat: link` it gets no
buttons, only a line saying that approvals for it go through the web console, with a link.
"""

from __future__ import annotations

import json
from typing import Any, Final

from proxy.grants.requests import AccessRequest, Approval, RequestId, RequestState
from proxy.grants.rules import count_approvals, rule_or_none
from proxy.notify.events import slack_escape
from proxy.policy.durations import format_duration
from proxy.policy.models import ChatApproval, Policy

Block = dict[str, Any]
APPROVE: Final = "approve"
DENY: Final = "deny"
ACTIONS_BLOCK: Final = "pgwarden_request"
DENY_CALLBACK: Final = "pgwarden_deny"
REASON_BLOCK: Final = "reason"
MAX_REASON: Final = 500  # characters of a denial's reason typed in the modal


def request_message(
    request: AccessRequest, approvals: tuple[Approval, ...], policy: Policy, link: str
) -> tuple[str, list[Block]]:
    """(fallback text, blocks) of the message that shows `request` in its channel."""
    what = _what(request)
    text = f"{request.requester} asks for {what}"
    reason = f"\n>{slack_escape(request.reason)}" if request.reason else ""
    blocks: list[Block] = [
        _section(f"*{slack_escape(request.requester)}* asks for {what}{reason}"),
        _fields(request, approvals, policy),
    ]
    rule = rule_or_none(policy, request)
    if request.state is RequestState.PENDING:
        if rule is not None and rule.chat is ChatApproval.LINK:
            blocks.append(_context(
                f"Approvals for this level go through the web console: <{link}|request "
                f"{request.id}>"
            ))  # fmt: skip
        else:
            blocks.append(_buttons(request.id))
    else:
        blocks.append(_context(outcome(request)))
    return text, blocks


def outcome(request: AccessRequest) -> str:
    """What became of a request that is no longer pending, in a line."""
    by = f" by {slack_escape(request.closed_by)}" if request.closed_by else ""
    why = f': "{slack_escape(request.close_reason)}"' if request.close_reason else ""
    state = request.state
    if state is RequestState.ACTIVE and request.ends_at is not None:
        return f":white_check_mark: Approved; active until {request.ends_at:%H:%M} UTC"
    if state is RequestState.EXPIRED:
        return ":hourglass: The grant expired"
    if state in (RequestState.DENIED, RequestState.REVOKED):
        return f":no_entry: {state.value.capitalize()}{by}{why}"
    return f"{state.value.capitalize()}{why}"


def plain_text(blocks: list[Block]) -> str:
    """`blocks` as lines of plain text, buttons as `[Label]`: what a message shows, for a
    terminal (the demo prints it when Slack is not configured)."""
    lines: list[str] = []
    for block in blocks:
        if "text" in block:
            lines.extend(str(block["text"]["text"]).splitlines())
        for field in block.get("fields", ()):
            name, _, value = str(field["text"]).partition("\n")
            lines.append(f"{name.strip('*')}: {value}")
        if block["type"] == "context":
            lines.extend(str(e["text"]) for e in block["elements"])
        if block["type"] == "actions":
            lines.append(" ".join(f"[{e['text']['text']}]" for e in block["elements"]))
    return "\n".join(lines)


def deny_modal(request_id: RequestId, channel: str, ts: str) -> Block:
    """The modal that asks an approver why they deny; it knows the request and its message."""
    metadata = json.dumps({"request": request_id, "channel": channel, "ts": ts})
    return {
        "type": "modal", "callback_id": DENY_CALLBACK, "private_metadata": metadata,
        "title": _plain("Deny request"), "submit": _plain("Deny"), "close": _plain("Cancel"),
        "blocks": [{
            "type": "input", "block_id": REASON_BLOCK, "label": _plain(f"Why deny {request_id}?"),
            "element": {"type": "plain_text_input", "action_id": REASON_BLOCK,
                        "multiline": True, "max_length": MAX_REASON},
        }],
    }  # fmt: skip


def _buttons(request_id: RequestId) -> Block:
    return {
        "type": "actions", "block_id": f"{ACTIONS_BLOCK}:{request_id}",
        "elements": [
            {"type": "button", "action_id": APPROVE, "value": request_id,
             "text": _plain("Approve"), "style": "primary"},
            {"type": "button", "action_id": DENY, "value": request_id,
             "text": _plain("Deny"), "style": "danger"},
        ],
    }  # fmt: skip


def _fields(request: AccessRequest, approvals: tuple[Approval, ...], policy: Policy) -> Block:
    rule = rule_or_none(policy, request)
    received = count_approvals(policy, request, approvals) if rule else len(approvals)
    needed = f" of {rule.required_approvals}" if rule else ""
    who = ", ".join(a.approver for a in approvals)
    facts = {
        "Request": request.id, "Target": request.target, "Level": request.access_level,
        "Duration": format_duration(request.duration), "State": request.state.value,
        "Approvals": f"{received}{needed}" + (f" ({who})" if who else ""),
    }  # fmt: skip
    fields = [{"type": "mrkdwn", "text": f"*{k}*\n{slack_escape(v)}"} for k, v in facts.items()]
    return {"type": "section", "fields": fields}


def _what(request: AccessRequest) -> str:
    return (
        f"{slack_escape(request.access_level)} on {slack_escape(request.target)} "
        f"for {format_duration(request.duration)}"
    )


def _section(text: str) -> Block:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _context(text: str) -> Block:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


def _plain(text: str) -> Block:
    return {"type": "plain_text", "text": text}
