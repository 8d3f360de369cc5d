"""Where pgwarden's own live temporary passwords occur in a text, in time linear in the text.

The redactor (`redact.py`) masks these passwords in every string of every audit record. A loop of
`secret in text` costs one C search per secret: the cheapest way for a handful of them, but with
thousands of live grants it would be most of the cost of auditing a query. So a kept snapshot of
more than FEW_SECRETS secrets is indexed, once. The index works on UTF-8 bytes (a text is
encoded, lone surrogates passed): a secret occurs in a text exactly where its UTF-8 form occurs
in the text's, since no character's encoding starts inside another's.

- The alphabet is every byte some secret uses; m is the shortest secret's length in bytes. A
  secret can only occur inside a run of at least m alphabet bytes. The text is translated byte by
  byte to 1 (in the alphabet) or 0, and m ones are searched for: ordinary SQL holds no such run
  when the secrets are generated passwords (32 letters and digits), and that one pass in C says
  so. Otherwise the runs are found the same way, one C search each.
- In runs, sampled windows are looked up among grams of the secrets. With a stride s and a gram
  length g = m - s + 1, every secret's grams starting at its offsets 0 .. s-1 are kept. A secret
  occurring in a run covers a position that lies a multiple of s from the run's start and at
  most s - 1 after the secret's start, and g bytes of the secret follow it: looking up the g
  bytes at every s-th position of each run misses no occurrence. A hit names candidate secrets,
  each confirmed by `in`.
- The stride is as long as the memory budget allows (k secrets keep k * s grams, GRAM_BUDGET at
  most), and no longer than MAX_STRIDE or m // 2, so that grams stay long enough to be specific.
- The runs are looked up only if that costs less than one `in` per secret would (a long run and
  a few dozen secrets: the loop is cheaper), so neither way is ever far above the cheaper one.

Secrets that share grams (generated ones do not: they are random) are all confirmed when such a
gram hits, so a text made to hit a gram many secrets share costs up to what the loop would.
The secrets found are then located in the text, overlapping occurrences included, and their
spans merged: `spans` tells the redactor what to mask, `contains` whether bytes hold a secret.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from operator import itemgetter

MIN_KNOWN_SECRET = 8  # shorter "secrets" would redact ordinary words
# Up to this many secrets, one `in` each costs less than the index's first pass (encode,
# translate, search): that costs about as much as 6 to 10 `in`s on queries of 60 bytes to
# 10 KB. Measured for issue 21, as are the costs below.
FEW_SECRETS = 8
GRAM_BUDGET = 1 << 16  # grams an index keeps: a few MB, whatever the number of secrets
MAX_STRIDE = 16  # with 32-character secrets, grams of 17 bytes or more
# Rough costs, in bytes scanned by `in` (each ~0.2 ns), to choose between the two ways once the
# runs are known (a few dozen secrets and a long run: one `in` each is cheaper):
IN_CALL = 600  # one `in`, besides the bytes it scans
LOOK_UP_CALL = 4000  # looking up the windows of runs: once per text ...
LOOK_UP_RUN = 1000  # ... once per run ...
LOOK_UP_WINDOW = 800  # ... and once per window (one every stride bytes of a run)

Span = tuple[int, int]


class KnownSecrets:
    """A set of secrets, ready to be found in texts and in bytes (as UTF-8).

    `kept`: the set is a snapshot that will search many texts, worth indexing when it is large.
    Otherwise (a collection read afresh for one text) each secret is simply searched for.
    """

    def __init__(self, secrets: Iterable[str], *, kept: bool = True) -> None:
        self._secrets = tuple(dict.fromkeys(s for s in secrets if len(s) >= MIN_KNOWN_SECRET))
        self._index: _Index | None = None
        if kept and len(self._secrets) > FEW_SECRETS:
            self._index = _Index(tuple(map(_utf8, self._secrets)))

    def spans(self, text: str) -> list[Span]:
        """Where known secrets occur in `text`, overlapping or adjacent occurrences merged."""
        spans: list[Span] = []
        for secret in self._found(text):
            at = text.find(secret)
            while at >= 0:  # every occurrence, overlapping ones too; bounded: `at` grows
                spans.append((at, at + len(secret)))
                at = text.find(secret, at + 1)
        return merge(spans) if spans else spans

    def contains(self, data: bytes) -> bool:
        """Whether `data` holds a known secret, encoded as UTF-8 (lone surrogates allowed)."""
        if self._index is None:
            return any(_utf8(secret) in data for secret in self._secrets)
        return bool(self._index.found(data))

    def _found(self, text: str) -> list[str]:
        if self._index is None:
            return [secret for secret in self._secrets if secret in text]
        found = self._index.found(_utf8(text))
        return [_text(secret) for secret in found] if found else []


def merge(spans: Iterable[Span]) -> list[Span]:
    """The spans sorted, overlapping or adjacent ones made one."""
    merged: list[Span] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


class _Index:
    """Many secrets (UTF-8): alphabet runs, then sampled grams (see the module docstring)."""

    def __init__(self, secrets: Sequence[bytes]) -> None:
        self._secrets = secrets
        shortest = min(map(len, secrets))
        stride = max(1, min(MAX_STRIDE, shortest // 2, GRAM_BUDGET // len(secrets)))
        self._stride, self._length = stride, shortest - stride + 1
        self._grams = _grams(secrets, stride, self._length)
        alphabet = set(b"".join(secrets))
        self._table = bytes(byte in alphabet for byte in range(256))
        self._ones = b"\x01" * shortest

    def found(self, data: bytes) -> list[bytes]:
        """The secrets that occur in `data`, found the cheaper way."""
        marks = data.translate(self._table)
        if self._ones not in marks:
            return []  # the common case: one translate and one search, in C
        runs = self._runs(marks)
        windows = sum(end - start for start, end in runs) // self._stride
        look_up = LOOK_UP_CALL + LOOK_UP_RUN * len(runs) + LOOK_UP_WINDOW * windows
        if len(self._secrets) * (IN_CALL + len(data)) < look_up:
            return [secret for secret in self._secrets if secret in data]
        return self._look_up(data, runs)

    def look_up(self, data: bytes) -> list[bytes]:
        """The secrets that occur in `data`, found by their grams whatever the cost."""
        return self._look_up(data, self._runs(data.translate(self._table)))

    def _runs(self, marks: bytes) -> list[Span]:
        """The runs of alphabet bytes (marked 1) at least as long as the shortest secret."""
        runs: list[Span] = []
        start = marks.find(self._ones)
        while start >= 0:  # bounded: each run starts after the one before
            end = marks.find(0, start + len(self._ones))
            end = len(marks) if end < 0 else end
            runs.append((start, end))
            start = marks.find(self._ones, end)
        return runs

    def _look_up(self, data: bytes, runs: list[Span]) -> list[bytes]:
        grams, length, stride = self._grams, self._length, self._stride
        candidates: set[bytes] = set()
        for start, end in runs:
            for at in range(start, end - length + 1, stride):  # a plain loop: the fastest here
                held = grams.get(data[at : at + length])
                if held is None:
                    continue
                if isinstance(held, list):
                    candidates.update(held)
                else:
                    candidates.add(held)
        return [secret for secret in candidates if secret in data]


def _grams(secrets: Sequence[bytes], stride: int, length: int) -> dict[bytes, bytes | list[bytes]]:
    """Each secret's grams at offsets 0 .. stride-1, naming the secret (or the secrets, when
    they share it)."""
    unique: dict[bytes, bytes | list[bytes]] = {}
    for at in range(stride):  # slices and inserts made in C
        unique.update(zip(map(itemgetter(slice(at, at + length)), secrets), secrets, strict=True))
    if len(unique) == stride * len(secrets):
        return unique  # random secrets: no gram repeats
    shared: dict[bytes, bytes | list[bytes]] = {}
    pairs = ((secret[at : at + length], secret) for secret in secrets for at in range(stride))
    for gram, secret in pairs:
        held = shared.setdefault(gram, secret)
        if held is secret:
            continue
        if not isinstance(held, list):
            shared[gram] = [held, secret]
        elif held[-1] is not secret:  # one secret's grams come together: a repeat is last
            held.append(secret)
    return shared


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _text(secret: bytes) -> str:
    return secret.decode("utf-8", "surrogatepass")
