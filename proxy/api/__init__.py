"""The HTTP API: requests, approvals, credentials and sessions, for the CLI, bots and scripts.

Served by `pgwarden serve` on `api.listen`, on the proxy's event loop (aiohttp). JSON in and out;
every `/api/v1/...` call needs `Authorization: Bearer <token>` (`auth.py`); errors are
`{"error": {"code", "message"}}` with stable codes (`errors.py`).

    POST   /api/v1/requests                    create {target, access_level, duration, reason}
    GET    /api/v1/requests?state=&limit=      list what the caller may see, newest first
    GET    /api/v1/requests/{id}               one request, with approvals and history
    POST   /api/v1/requests/{id}/approve       {comment?}
    POST   /api/v1/requests/{id}/deny          {reason}
    POST   /api/v1/requests/{id}/cancel        (the requester)
    POST   /api/v1/requests/{id}/revoke        {reason?}
    POST   /api/v1/requests/{id}/credentials   a new temporary password (the requester, once active)
    GET    /api/v1/targets                     what the caller may request: limits, approvers
    GET    /api/v1/status                      the caller's pending requests and active grants
    GET    /api/v1/sessions                    live sessions the caller may see
    DELETE /api/v1/sessions/{id}               end one {reason?} (admins, approvers of its target)
    GET    /healthz  /readyz  /metrics         no token (liveness, readiness, Prometheus)

Modules: `app.py` (routes, middlewares, health), `requests_routes.py`, `sessions_routes.py`,
`caller_routes.py` (targets, status), `access.py` (who sees what), `auth.py` (tokens),
`schemas.py` (input), `views.py` (output), `errors.py`, `context.py` (dependencies),
`server.py` (listener), `tokens.py` (`pgwarden token`).
"""
