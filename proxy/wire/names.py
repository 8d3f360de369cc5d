"""Which user and database a StartupMessage names, and whether pgwarden accepts those names.

Postgres truncates a name of 64 bytes or more to 63 (NAMEDATALEN - 1) without a word, so a proxy
that checks the full name and forwards it would authorize one role and log in as another.
pgwarden refuses such names outright, and names with control or invisible characters (newline,
NUL, bidi overrides, zero-width characters), which have no business in a role or database name and
make look-alike names. User-name problems are 28000, database-name problems 3D000.
"""

from __future__ import annotations

import unicodedata
from typing import Final, NamedTuple

from proxy.wire import sqlstate
from proxy.wire.errors import InvalidStartupName
from proxy.wire.limits import MAX_IDENTIFIER_BYTES
from proxy.wire.startup import StartupMessage

# Unicode categories refused in names: control (Cc: NUL, newline, ESC...), format (Cf: bidi
# overrides, zero-width joiners, BOM), surrogates (Cs: undecodable bytes), and the line and
# paragraph separators (Zl, Zp).
FORBIDDEN_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


class LoginNames(NamedTuple):
    """The user and the effective database of a login, both checked."""

    user: str
    database: str


def _check_name(name: str, kind: str, code: str) -> str:
    if not name:
        raise InvalidStartupName(f"empty {kind} name", sqlstate=code)
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_IDENTIFIER_BYTES:
        message = f"{kind} name is {size} bytes long; the limit is {MAX_IDENTIFIER_BYTES}"
        raise InvalidStartupName(message, sqlstate=code)
    for char in name:
        if unicodedata.category(char) in FORBIDDEN_CATEGORIES:
            message = f"{kind} name contains the forbidden character U+{ord(char):04X}"
            raise InvalidStartupName(message, sqlstate=code)
    return name


def check_user_name(name: str) -> str:
    """`name` if acceptable as a role name, else InvalidStartupName (28000)."""
    return _check_name(name, "user", sqlstate.INVALID_AUTHORIZATION_SPECIFICATION)


def check_database_name(name: str) -> str:
    """`name` if acceptable as a database name, else InvalidStartupName (3D000)."""
    return _check_name(name, "database", sqlstate.INVALID_CATALOG_NAME)


def effective_database(startup: StartupMessage) -> str:
    """The database a login means: as in Postgres, a missing or empty `database` is the user's
    name. Policy must match grants against this, not against the raw parameter."""
    return startup.database or startup.user


def login_names(startup: StartupMessage) -> LoginNames:
    """The checked user and effective database of a StartupMessage."""
    user = check_user_name(startup.user)
    return LoginNames(user, check_database_name(effective_database(startup)))
