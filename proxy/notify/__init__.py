"""Notifications: webhook events written to an outbox in the state store, delivered by the leader.

`events` builds what happened into an `Event`; `outbox` writes it, in the transaction of the
change it announces, once per destination that wants it; `deliverer` sends the rows (on the
leader only, `proxy/cluster/leader.py`) through `webhooks`, retrying, and marks them.
"""
