"""At start, before the primary listens: end what a previous run left on the databases.

`proxy/upstream/orphans.py` finds and terminates the backends a crashed run left behind (and
logs each at WARNING); here each is counted in `pgwarden_orphan_backends_ended_total{target}` and
recorded in the audit log (`backend.orphan_ended`). The record follows the termination: ending a
backend only ever takes access away, so a log that cannot be written must not keep one alive.
"""

from __future__ import annotations

import logging

from proxy.audit import AuditLog, AuditUnavailable
from proxy.audit.events import OrphanBackendEnded
from proxy.policy.models import Policy
from proxy.runtime.metrics import Metrics, policy_label
from proxy.upstream.orphans import SweepScope, sweep_orphans

log = logging.getLogger(__name__)


async def end_leftover_backends(
    policy: Policy, metrics: Metrics, audit: AuditLog, scope: SweepScope | None = None
) -> int:
    """Sweep every target with a control role (a replica: within `scope`); how many backends
    were ended. Never raises."""
    orphans = await sweep_orphans(policy, scope=scope)
    for orphan in orphans:
        (target,) = policy_label(policy, orphan.target)
        metrics.orphan_backends_ended.labels(target).inc()
        try:
            audit.append(
                OrphanBackendEnded(
                    orphan.target, orphan.role, orphan.process_id, orphan.application_name
                )
            )
        except AuditUnavailable as exc:  # the log fails closed on its own: sessions are refused
            log.error("could not record ending backend %d: %s", orphan.process_id, exc)
    if orphans:
        log.warning("ended %d backend(s) a previous run of pgwarden left behind", len(orphans))
    return len(orphans)
