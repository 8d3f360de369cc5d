"""The tables of single sign-on (`store_identity.py` says what each holds), as one migration for
each store: SQLite's (`store_schema.py`) and PostgreSQL's (`pg_schema.py`) append them.

Kept apart from the statements so that both schema modules can import them without a cycle.
"""

from __future__ import annotations

from typing import Final

SQLITE_MIGRATION: Final[tuple[str, ...]] = (
    """CREATE TABLE api_sessions (
        digest BLOB PRIMARY KEY CHECK (length(digest) = 32),
        user_name TEXT NOT NULL,
        groups TEXT NOT NULL,
        issuer TEXT NOT NULL,
        subject TEXT NOT NULL,
        issued_us INTEGER NOT NULL,
        expires_us INTEGER NOT NULL,
        revoked_us INTEGER,
        refresh_digest BLOB CHECK (length(refresh_digest) = 32)
    ) STRICT""",
    "CREATE INDEX api_sessions_refresh ON api_sessions (refresh_digest)",
    """CREATE TABLE people (
        user_name TEXT PRIMARY KEY,
        issuer TEXT NOT NULL,
        subject TEXT NOT NULL,
        email TEXT,
        groups TEXT NOT NULL,
        updated_us INTEGER NOT NULL,
        removed_us INTEGER,
        UNIQUE (issuer, subject)
    ) STRICT""",
    """CREATE TABLE sign_in_flows (
        digest BLOB PRIMARY KEY CHECK (length(digest) = 32),
        kind TEXT NOT NULL CHECK (kind IN ('device', 'browser')),
        state TEXT,
        nonce TEXT,
        verifier TEXT,
        device_code TEXT,
        redirect_uri TEXT,
        created_us INTEGER NOT NULL,
        expires_us INTEGER NOT NULL,
        used_us INTEGER
    ) STRICT""",
)

POSTGRES_MIGRATION: Final[tuple[str, ...]] = (
    """CREATE TABLE api_sessions (
        digest bytea PRIMARY KEY CHECK (length(digest) = 32),
        user_name text COLLATE "C" NOT NULL,
        groups text NOT NULL,
        issuer text COLLATE "C" NOT NULL,
        subject text COLLATE "C" NOT NULL,
        issued_us bigint NOT NULL,
        expires_us bigint NOT NULL,
        revoked_us bigint,
        refresh_digest bytea CHECK (length(refresh_digest) = 32)
    )""",
    "CREATE INDEX api_sessions_refresh ON api_sessions (refresh_digest)",
    """CREATE TABLE people (
        user_name text COLLATE "C" PRIMARY KEY,
        issuer text COLLATE "C" NOT NULL,
        subject text COLLATE "C" NOT NULL,
        email text,
        groups text NOT NULL,
        updated_us bigint NOT NULL,
        removed_us bigint,
        UNIQUE (issuer, subject)
    )""",
    """CREATE TABLE sign_in_flows (
        digest bytea PRIMARY KEY CHECK (length(digest) = 32),
        kind text COLLATE "C" NOT NULL CHECK (kind IN ('device', 'browser')),
        state text,
        nonce text,
        verifier text,
        device_code text,
        redirect_uri text,
        created_us bigint NOT NULL,
        expires_us bigint NOT NULL,
        used_us bigint
    )""",
)
