"""What `verify` walks once files were archived (`archive.py`): where the chain starts, which
files are walked, and which anchors must match the files afterwards.

- The log alone, with a live anchor: the walk starts after it (seq `seq + 1`, prev its `mac`) and
  keeps the workers it names. A file the anchor covers that is still here (an archive cut short
  before it removed the originals) must be the very file it archived (size and SHA-256); it is
  not walked again.
- With archive directories: their files and the log's are walked as one chain from seq 1 (a file
  found in two places must be the same), and every anchor — the copies in the directories and
  the live one — must name files that were walked, as they were archived, beginning and ending
  with the records it says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from proxy.audit.archive import (
    Anchor,
    ArchivedFile,
    BadAnchor,
    FileFacts,
    anchor_copy_name,
    anchor_path,
    archived_in,
    digest,
    load_anchor,
    read_anchor,
)
from proxy.audit.records import Signer, archive_seq


class AnchorProblem(Exception):
    """An anchor, or a file it names, does not hold up; `file` is the one to look at."""

    def __init__(self, file: str, message: str) -> None:
        super().__init__(f"{file}: {message}")
        self.file, self.message = file, message


@dataclass(slots=True)
class WalkPlan:
    files: list[Path]  # in chain order
    anchor: Anchor | None = None  # the live anchor
    origin: str = ""  # what the walk starts after: "the anchor audit.jsonl.anchor"
    leftovers: list[ArchivedFile] = field(default_factory=list)  # covered, not walked
    anchors: list[tuple[Anchor, str]] = field(default_factory=list)  # checked after the walk
    archived: int | None = None  # files from the archive directories (None: none given)


def plan_walk(path: Path, files: list[Path], archives: Sequence[Path], signer: Signer) -> WalkPlan:
    anchor = _live_anchor(path, signer)
    if archives:
        plan = _with_archives(path, files, archives, signer)
        plan.anchor = anchor
        if anchor is not None:  # alone, the remainder is checked by its link to the anchor
            plan.anchors.append((anchor, anchor_path(path).name))
        return plan
    if anchor is None:
        return WalkPlan(files)
    name = anchor_path(path).name
    covered = [f for f in files if (seq := archive_seq(path, f)) is not None and seq <= anchor.seq]
    plan = WalkPlan([f for f in files if f not in covered], anchor, f"the anchor {name}")
    for file in covered:
        found = digest(file)
        if anchor.covers(file.name) != found:
            message = (f"{name} archived every record up to seq {anchor.seq}, but not this "
                       "file (or it changed since)")  # fmt: skip
            raise AnchorProblem(file.name, message)
        plan.leftovers.append(found)
    return plan


def check_anchors(plan: WalkPlan, walked: Sequence[FileFacts]) -> None:
    """After the walk: each anchor must describe the files walked (see the module docstring)."""
    seen = {facts.name: facts for facts in walked}
    for anchor, name in plan.anchors:
        for entry in anchor.files:
            if (facts := seen.get(entry.name)) is None:
                message = f"{entry.name}, which this anchor archived, is in neither the log nor "
                raise AnchorProblem(name, message + "the archive")
            if facts.archived() != entry:
                message = f"{entry.name} is not the file this anchor archived (size or SHA-256)"
                raise AnchorProblem(name, message)
        first, last = seen[anchor.files[0].name], seen[anchor.files[-1].name]
        ends = (first.first_seq, first.first_prev, last.last_seq, last.last_mac)
        if ends != (anchor.start_seq, anchor.start_prev, anchor.seq, anchor.mac):
            message = f"the anchor's records {anchor.start_seq}-{anchor.seq} are not its files'"
            raise AnchorProblem(name, message)


def _live_anchor(path: Path, signer: Signer) -> Anchor | None:
    name = anchor_path(path).name
    try:
        anchor = read_anchor(path, signer)
    except BadAnchor as exc:
        raise AnchorProblem(name, str(exc)) from None
    if anchor is not None and anchor.chain != path.name:
        message = f"this is {anchor.chain}'s anchor, not {path.name}'s: put in another's place?"
        raise AnchorProblem(name, message)
    return anchor


def _with_archives(
    path: Path, files: list[Path], archives: Sequence[Path], signer: Signer
) -> WalkPlan:
    chain: dict[str, Path] = {}
    anchors: list[tuple[Anchor, str]] = []
    for directory in archives:
        archived, copies = archived_in(directory, path)
        for file in archived:
            _merge(chain, file)
        anchors += [(_anchor_copy(copy, path, signer), copy.name) for copy in copies]
    for file in files:
        if file != path:
            _merge(chain, file)
    ordered = sorted(chain.values(), key=lambda f: archive_seq(path, f) or 0)
    walked = [*ordered, *([path] if path.exists() else [])]
    from_archive = sum(f.parent != path.parent for f in walked)
    return WalkPlan(walked, anchors=anchors, archived=from_archive)


def _merge(chain: dict[str, Path], file: Path) -> None:
    other = chain.setdefault(file.name, file)
    if other != file and digest(other) != digest(file):
        message = f"{other} and {file} differ: two logs archived to one place?"
        raise AnchorProblem(file.name, message)


def _anchor_copy(copy: Path, path: Path, signer: Signer) -> Anchor:
    try:
        anchor = load_anchor(copy, signer)
    except BadAnchor as exc:
        raise AnchorProblem(copy.name, str(exc)) from None
    if copy.name != anchor_copy_name(path.name, anchor.seq):
        message = f"this is {anchor_copy_name(anchor.chain, anchor.seq)}, renamed"
        raise AnchorProblem(copy.name, message)
    return anchor
