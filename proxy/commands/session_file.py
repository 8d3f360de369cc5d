"""The signed-in session of `pgwarden login`, kept in the person's config dir.

`$XDG_CONFIG_HOME/pgwarden/session.json` (by default `~/.config/pgwarden/session.json`) holds the
server's session token (`pgs_...`), its end, the user and groups it was issued for, the identity
provider's refresh token, and the server URL it belongs to: the secrets are never sent to another
server than the one that issued them. It is written atomically with mode 0600 in a 0700 folder,
and read only if it is a regular file of ours that nobody else can read: one that others could
read may have leaked, so it is refused with the way out (sign out, which revokes it, and in).

`fresh_session()` is what every command but login/logout uses: the stored session, refreshed
first when it has ended or ends within `REFRESH_MARGIN` (the HTTP call is passed in). A lock file
beside the session serialises refreshes, since the provider rotates refresh tokens on every use
and two commands refreshing with the same one at once would lose the sign-in.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

FILE_NAME = "session.json"
FORMAT_VERSION = 1
MAX_FILE_BYTES = 64 * 1024  # a session is well under 8 KiB; more is not one of ours
# Refresh this long before the end: covers the command's own run and a skewed laptop clock.
REFRESH_MARGIN = timedelta(minutes=1)
SIGN_IN_AGAIN = "your pgwarden session ended; sign in again with: pgwarden login"
NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)  # a symlink planted in its place is not followed


class SessionFileError(Exception):
    """The session file cannot be used (unsafe, unreadable, malformed): a message to show."""


class SessionEnded(Exception):
    """The session is over and cannot be refreshed: the person must sign in again."""

    def __init__(self, message: str = SIGN_IN_AGAIN) -> None:
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class StoredSession:
    url: str  # the server that issued it
    session_token: str = field(repr=False)
    expires_at: datetime
    user: str
    groups: tuple[str, ...]
    refresh_token: str | None = field(repr=False, default=None)

    def ends_within(self, margin: timedelta, now: datetime) -> bool:
        return self.expires_at - now <= margin

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["expires_at"] = self.expires_at.isoformat()
        document["groups"] = list(self.groups)
        return {"version": FORMAT_VERSION, **document}


def session_path(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "pgwarden" / FILE_NAME


def session_from_answer(answer: Mapping[str, Any], url: str) -> StoredSession:
    """The server's session answer (`/v1/auth/...`) as a StoredSession; ValueError if it is not
    one."""
    token, user, groups = answer.get("session_token"), answer.get("user"), answer.get("groups")
    refresh = answer.get("refresh_token")
    if not isinstance(token, str) or not token.startswith("pgs_"):
        raise ValueError("no session_token")
    if not isinstance(user, str) or not user:
        raise ValueError("no user")
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise ValueError("groups is not a list of names")
    if refresh is not None and not isinstance(refresh, str):
        raise ValueError("refresh_token is not text")
    expires_at = _parse_time(answer.get("expires_at"))
    return StoredSession(url, token, expires_at, user, tuple(groups), refresh or None)


def read_session(path: Path, *, allow_exposed: bool = False) -> StoredSession | None:
    """The stored session, None if there is none. `allow_exposed`: read it even if others can
    (to sign out, which revokes it)."""
    try:
        fd = os.open(path, os.O_RDONLY | NO_FOLLOW | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SessionFileError(f"cannot read {path}: {exc.strerror} (is it a symlink?)") from exc
    with os.fdopen(fd, "rb") as source:
        _check_safe(path, os.fstat(source.fileno()), allow_exposed)
        raw = source.read(MAX_FILE_BYTES + 1)
    try:
        document = json.loads(raw)
        if len(raw) > MAX_FILE_BYTES or document.get("version") != FORMAT_VERSION:
            raise ValueError("not a session file of this pgwarden")
        url = document["url"]
        if not isinstance(url, str):
            raise ValueError("url is not text")
        return session_from_answer(document, url)
    except (ValueError, KeyError, AttributeError) as exc:
        raise SessionFileError(
            f"{path} is not a pgwarden session ({exc}): delete it and sign in with: pgwarden login"
        ) from None


def _check_safe(path: Path, status: os.stat_result, allow_exposed: bool) -> None:
    if not stat.S_ISREG(status.st_mode):
        raise SessionFileError(f"{path} is not a regular file: delete it and run pgwarden login")
    if allow_exposed or os.name != "posix":  # Windows: the profile folder's ACL protects it
        return
    if status.st_uid != os.getuid():
        raise SessionFileError(
            f"{path} belongs to another user (uid {status.st_uid}): it cannot hold your "
            f"session; delete it and sign in with: pgwarden login"
        )
    if status.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        mode = stat.S_IMODE(status.st_mode)
        raise SessionFileError(
            f"{path} can be read by others (mode {mode:04o}) and holds your session, which may "
            "have leaked: sign out and in again with: pgwarden logout && pgwarden login"
        )


def write_session(path: Path, session: StoredSession) -> None:
    """Replace the session file atomically; it is 0600 from its first byte."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()  # a crashed run's leftover
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(partial, flags, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as sink:
            json.dump(session.to_json(), sink, indent=2)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise


def delete_session(path: Path) -> bool:
    """Remove the session file; False if there was none."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


Refresh = Callable[[str], Mapping[str, Any]]  # refresh token -> the server's session answer


def fresh_session(
    path: Path, url: str, refresh: Refresh, now: Callable[[], datetime]
) -> StoredSession:
    """The stored session for `url`, refreshed (and stored) first when it ends within
    REFRESH_MARGIN. `refresh` raises SessionEnded when the server refuses."""
    session = _session_for(path, url)
    if not session.ends_within(REFRESH_MARGIN, now()):
        return session
    with _refresh_lock(path):
        session = _session_for(path, url)  # another command may have refreshed meanwhile
        if not session.ends_within(REFRESH_MARGIN, now()):
            return session
        if session.refresh_token is None:
            raise SessionEnded()
        try:
            renewed = session_from_answer(refresh(session.refresh_token), url)
        except ValueError as exc:
            raise SessionFileError(f"the server's refreshed session is malformed: {exc}") from None
        write_session(path, renewed)
        return renewed


def _session_for(path: Path, url: str) -> StoredSession:
    session = read_session(path)
    if session is None:
        raise SessionEnded("not signed in: sign in with: pgwarden login")
    if session.url != url:
        raise SessionFileError(
            f"you are signed in to {session.url}, not {url}: sign in there with: pgwarden login"
        )
    return session


@contextlib.contextmanager
def _refresh_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl  # noqa: PLC0415 - POSIX only
    except ImportError:  # Windows: two commands refreshing at once is left to chance there
        yield
        return
    with (path.with_name(f".{path.name}.lock")).open("a") as guard:
        os.chmod(guard.fileno(), 0o600)
        fcntl.flock(guard, fcntl.LOCK_EX)  # held while the other command's refresh runs
        yield


def _parse_time(text: object) -> datetime:
    if not isinstance(text, str):
        raise ValueError("no expires_at")
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError("expires_at has no time zone")
    return parsed
