"""pgwarden: a just-in-time access gateway for PostgreSQL.

People request time-boxed access to a database at an access level; approvers approve; pgwarden
issues a temporary credential, authenticates Postgres clients against the active grant, relays them
to the real database as the mapped service role, and ends the session when the grant ends.
"""

__version__ = "0.1.0"

from proxy import native

native.choose()
