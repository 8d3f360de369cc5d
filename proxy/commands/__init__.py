"""The people's side of the `pgwarden` command line: a client of the HTTP API.

Requesters and approvers run these commands from their own machines (`pgwarden request`,
`requests`, `show`, `approve`, `deny`, `cancel`, `revoke`, `credentials`, `psql`, `sessions`,
`kill`). They talk to `pgwarden serve` over HTTP with a bearer token, configured by
`PGWARDEN_URL` and `PGWARDEN_TOKEN`, or by `~/.config/pgwarden/cli.yaml` (`config.py`).

Every command takes `--json` (the server's JSON, for scripts) and exits with:

    0  done
    1  refused or failed by the server (not permitted, not found, wrong state, ...)
    2  usage or configuration error (bad arguments, no URL or token, psql not found)
    3  cannot reach the server

Modules: `transport.py` (HTTP, errors → exit codes), `config.py`, `render.py` (tables and
times), `request_commands.py`, `access_commands.py` (credentials, psql, sessions, kill).
"""
