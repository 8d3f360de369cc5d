"""The web console in the server: its audit hook and where its transcripts are read from."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from aiohttp import web

from proxy.audit import AuditLog
from proxy.audit.transcript import audit_files
from proxy.config import FsyncPolicy, ServerConfig
from proxy.runtime.identity_audit import IdentityAuditor
from proxy.web.app import install
from proxy.web.deps import ConsoleDeps


def console_pages(config: ServerConfig, audit: AuditLog) -> Callable[[web.Application], None]:
    """What adds the console to the API's application (`api_server(pages=...)`)."""
    auditor = IdentityAuditor(audit, wait_durable=config.audit.fsync is FsyncPolicy.ALWAYS)
    deps = ConsoleDeps(auditor, partial(audit_files, config.paths.audit_log))
    return partial(install, deps=deps)
