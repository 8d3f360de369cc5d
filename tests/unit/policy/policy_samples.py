"""Policy documents shared by the policy-file and reload tests: one valid, and the bad ones of
SECURITY.md row 42, each with the text its error must contain."""

from __future__ import annotations

from dataclasses import dataclass

VALID = """\
version: 1
admin_groups: [dba]
pending_timeout: 1h
users:
  alice: {groups: [dev]}
  bob: {groups: [dba]}
  carol: {groups: [dba]}
targets:
  orders:
    description: Orders database
    upstream: {host: 127.0.0.1, port: 5432, database: orders, tls: prefer}
    max_duration: 4h
    control: {role: pgw_control, password_env: CONTROL_PW}
    approval:
      approvers: {groups: [dba]}
      required_approvals: 1
      auto_approve:
        - {users: [alice], access_levels: [read-only], max_duration: 1h}
    access_levels:
      read-only: {role: orders_ro, password_env: RO_PW}
      read-write: {role: orders_rw, password_env: RW_PW, max_duration: 1h}
"""

# The classic "billion laughs": nine levels of ten aliases each, 10**9 strings if expanded.
BILLION_LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{chr(ord('b') + i)}: &{chr(ord('b') + i)} [{', '.join(['*' + chr(ord('a') + i)] * 9)}]\n"
    for i in range(8)
)


def edit(old: str, new: str, text: str = VALID) -> str:
    """`text` with `old` replaced once; fails loudly if `old` is not there (a stale test)."""
    assert text.count(old) == 1, f"{old!r} is not exactly once in the sample"
    return text.replace(old, new)


@dataclass(frozen=True)
class BadPolicy:
    name: str
    text: str
    expected: tuple[str, ...]  # each must appear in one problem line


ROW_42: tuple[BadPolicy, ...] = (
    BadPolicy(
        "syntax_error",
        edit("    max_duration: 4h\n", "    max_duration: [4h\n"),
        ("line 13, column 12: expected ',' or ']', but got ':'",),
    ),
    BadPolicy(
        "duplicate_key",
        edit("  carol: {groups: [dba]}\n", "  carol: {groups: [dba]}\n  bob: {groups: [dev]}\n"),
        ("line 8, column 3: duplicate key 'bob' (first defined on line 6)",),
    ),
    BadPolicy("alias_bomb", BILLION_LAUGHS, ("YAML anchors and aliases are not allowed",)),
    BadPolicy(
        "unknown_top_level_field",
        VALID + "alerts: {webhook: https://example.com}\n",
        ("alerts: unknown key",),
    ),
    BadPolicy(
        "unknown_nested_field",
        edit("    max_duration: 4h\n", "    max_duraton: 4h\n"),
        (
            "targets.orders.max_duraton: unknown key (did you mean max_duration?) (line 12)",
            "targets.orders.max_duration: required",
        ),
    ),
    BadPolicy(
        "timestamp_without_timezone",
        edit("pending_timeout: 1h", "pending_timeout: 2026-01-01 10:00"),
        ("pending_timeout: must be a duration, not a date or time ('2026-01-01 10:00')",),
    ),
    BadPolicy(
        "date_where_a_duration_belongs",
        edit("    max_duration: 4h\n", "    max_duration: 2026-01-01\n"),
        ("targets.orders.max_duration: must be a duration, not a date or time ('2026-01-01')",),
    ),
    BadPolicy(
        "unknown_access_level_in_auto_approve",
        edit("access_levels: [read-only]", "access_levels: [read-onyl]"),
        (
            "targets.orders.approval.auto_approve[0].access_levels: unknown access level "
            "'read-onyl' (this target has: read-only, read-write) (line 18)",
        ),
    ),
    BadPolicy(
        "half_written_mid_value",
        VALID[: VALID.index("read-write:") + 20],
        ("line 21, column 27: expected ',' or '}', but got '<stream end>'",),
    ),
    BadPolicy(
        "half_written_at_a_line_end",
        VALID[: VALID.index("    max_duration: 4h")],
        ("targets.orders.max_duration: required", "targets.orders.approval: required"),
    ),
    BadPolicy("empty_file", "", ("the policy is empty",)),
    BadPolicy("only_comments", "# nothing here yet\n", ("the policy is empty",)),
    BadPolicy(
        "inline_password",
        edit("{role: orders_ro, password_env: RO_PW}", "{role: orders_ro, password: hunter2}"),
        (
            "targets.orders.access_levels.read-only.password: secrets are not allowed in the "
            "file; use password_env: VARIABLE or password_file: PATH (line 20)",
        ),
    ),
)
