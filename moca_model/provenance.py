"""Recogniser provenance: which face recogniser produced the ArcFace embeddings a file holds.

Embeddings of different recognisers (antelopev2's glintr100, buffalo_l's w600k_r50, a pack registered by a
manifest, the toy world's rec_toy) live in different spaces: an adapter trained on one gives a silently weaker
likeness from another. Identity files, training shards and adapters therefore carry one header entry:

    "face_recognizer": '{"pack": "antelopev2", "file": "glintr100.onnx", "sha256": "<first 16 hex digits>"}'

The hash is of the recogniser's ONNX bytes, so two records match when their hashes agree (the pack name is
for messages: a renamed folder still matches; a different export of "the same" model does not). Files written
before the record existed load with a one-line notice, printed once per file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

HEADER_KEY = "face_recognizer"
DIGEST_CHARS = 16
log = logging.getLogger("moca.provenance")


class RecognizerMismatchError(ValueError):
    """Embeddings of one recogniser meet a model or data made with another; the message names both and the fix."""


@dataclass(frozen=True)
class Recognizer:
    pack: str            # the face pack's name, e.g. "antelopev2"
    file: str            # the recogniser file's name, e.g. "glintr100.onnx"
    sha256: str          # first DIGEST_CHARS hex digits of the file's sha256

    def label(self) -> str:
        return f"{self.pack} ({self.file}, sha256 {self.sha256})"

    def matches(self, other: "Recognizer") -> bool:
        return self.sha256 == other.sha256

    def as_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    @classmethod
    def from_value(cls, value, where: str = "the file") -> "Recognizer | None":
        """A record from its JSON string or dict (None stays None); a clear error for a damaged one."""
        if value is None:
            return None
        try:
            d = json.loads(value) if isinstance(value, str) else dict(value)
            rec = cls(str(d["pack"]), str(d["file"]), str(d["sha256"]))
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"{where}: its '{HEADER_KEY}' record {value!r} is unreadable ({e}); re-create the "
                             "file with this version of MoCA") from e
        return rec

    @classmethod
    def of_file(cls, pack: str, path) -> "Recognizer":
        """The record of the recogniser file at ``path`` in face pack ``pack`` (hash cached, see file_sha256)."""
        return cls(str(pack), Path(path).name, file_sha256(path))


_DIGESTS: dict[tuple, str] = {}


def file_sha256(path, chars: int = DIGEST_CHARS) -> str:
    """The first ``chars`` hex digits of the file's sha256, cached by (path, mtime, size): a 250 MB recogniser
    is read once per process (about a second), then the answer is free until the file changes."""
    p = Path(os.path.expanduser(str(path))).resolve()
    st = p.stat()
    key = (str(p), st.st_mtime_ns, st.st_size)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key][:chars]


# ---------------------------------------------------------------------------------------------- headers
def header(rec: Recognizer | None) -> dict:
    """The safetensors header entry for ``rec`` ({} when unknown)."""
    return {} if rec is None else {HEADER_KEY: rec.to_json()}


def from_header(meta: dict, where: str) -> Recognizer | None:
    """The record in a safetensors header (None when the file predates records)."""
    return Recognizer.from_value((meta or {}).get(HEADER_KEY), where)


def read_file_record(path) -> Recognizer | None:
    """The record in a .safetensors file's header, reading only the header."""
    from safetensors import safe_open
    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
    return from_header(meta, Path(path).name)


_NOTICED: set = set()


def notice_unrecorded(kind: str, name) -> bool:
    """One log line (once per file) for a file without a record; returns whether it was printed now."""
    key = (kind, str(name))
    if key in _NOTICED:
        return False
    _NOTICED.add(key)
    log.warning("MoCA: %s %s: no record of which face recogniser made the embeddings (written before MoCA "
                "recorded it), so a recogniser mismatch cannot be caught; re-create it to record one.", kind, name)
    return True


# ---------------------------------------------------------------------------------------------- checks
def require_match(expected: Recognizer | None, expected_what: str, given: Recognizer | None, given_what: str,
                  fix: str, where: str = "MoCA") -> None:
    """Refuse ``given`` when both records are known and differ; unknown records pass (see notice_unrecorded)."""
    if expected is None or given is None or expected.matches(given):
        return
    raise RecognizerMismatchError(
        f"{where}: {given_what} comes from the face recogniser {given.label()}, but {expected_what} from "
        f"{expected.label()}. Embeddings of different recognisers live in different spaces (the likeness would be "
        f"silently weaker). Fix: {fix}")


def identity_fix(adapter: Recognizer, identity: Recognizer) -> str:
    """The fix for an identity whose recogniser is not the adapter's."""
    return (f"encode the reference photos again with the '{adapter.pack}' face pack (MoCA Face Analyzer Loader / "
            f"FaceAnalyzer.load(pack='{adapter.pack}')), or use an adapter trained on '{identity.pack}' embeddings.")


def check_identity(adapter: Recognizer | None, adapter_name: str, identity: Recognizer | None,
                   identity_name: str = "the identity", where: str = "MoCA") -> None:
    """Refuse an identity made by another recogniser than the one the adapter was trained on."""
    if adapter is not None and identity is not None:
        require_match(adapter, f"the adapter {adapter_name} was trained on embeddings", identity, identity_name,
                      identity_fix(adapter, identity), where)


def common_record(records: list[tuple[str, Recognizer | None]], what: str, fix: str) -> Recognizer | None:
    """The one recogniser of a set of files [(name, record)]; RecognizerMismatchError listing the groups when
    they disagree. Files without a record get a notice and do not count."""
    groups: dict[str, list[str]] = {}
    recs: dict[str, Recognizer] = {}
    unrecorded = [name for name, rec in records if rec is None]
    for name, rec in records:
        if rec is not None:
            groups.setdefault(rec.sha256, []).append(name)
            recs[rec.sha256] = rec

    def show(names):
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    if len(unrecorded) == 1:
        notice_unrecorded(what, unrecorded[0])
    elif unrecorded:                                     # one line for the lot
        notice_unrecorded(f"{len(unrecorded)} of {len(records)} {what}s", show(unrecorded))
    if len(groups) > 1:
        parts = [f"{recs[h].label()}: {len(n)} {what}(s) ({show(n)})" for h, n in groups.items()]
        raise RecognizerMismatchError(
            f"The {what}s were made with different face recognisers - " + "; ".join(parts) + ". Their embeddings "
            f"live in different spaces and must not be mixed. Fix: {fix}")
    return next(iter(recs.values()), None)
