"""The web console: server-rendered pages for requesters, approvers and admins (issue 19).

Served by the API's server under `/console/` (its routes are named `console:...`, and the API's
bearer check leaves them to `guard.py`, which signs people in with a cookie). Every page is a
Jinja2 template, autoescaped; forms work without JavaScript; the one script, `static/console.js`,
only refreshes a page when something changed and copies a credential to the clipboard.
"""
