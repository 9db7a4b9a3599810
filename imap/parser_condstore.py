"""RFC 7162 (CONDSTORE/QRESYNC) pieces of the command grammar, used by imap/parser.py.

  mod-sequence-value  = 1*DIGIT   ; positive unsigned 63-bit integer
  mod-sequence-valzer = "0" / mod-sequence-value
  select-param =/ "QRESYNC" SP "(" uidvalidity SP mod-sequence-value [SP known-uids]
                  [SP seq-match-data] ")"
  seq-match-data = "(" known-sequence-set SP known-uid-set ")"

Pure: no I/O; errors are `BadSyntaxError` (a BAD for the command).
"""

from __future__ import annotations

from mailstack.imap import commands as c
from mailstack.imap.parser_reader import BadSyntaxError, Reader
from mailstack.imap.sequence import SequenceSet

MAX_MODSEQ = 2**63 - 1  # RFC 7162 §7: mod-sequence-value is a positive unsigned 63-bit integer


def modseq(r: Reader, *, zero: bool = False) -> int:
    """mod-sequence-value (1..2^63-1), or mod-sequence-valzer (0..) when `zero`."""
    n = r.number("a mod-sequence")
    if n > MAX_MODSEQ or (n == 0 and not zero):
        raise BadSyntaxError(f"mod-sequence must be in {0 if zero else 1}..{MAX_MODSEQ}")
    return n


def qresync(r: Reader) -> c.Qresync:
    # "(" uidvalidity SP mod-sequence-value [SP known-uids] [SP seq-match-data] ")"
    # seq-match-data = "(" known-sequence-set SP known-uid-set ")"
    r.expect(b"(", "( after QRESYNC")
    uid_validity = r.nz_number("a UIDVALIDITY")
    r.sp()
    highest = modseq(r)
    known: SequenceSet | None = None
    match: tuple[SequenceSet, SequenceSet] | None = None
    if r.accept(b" "):
        if r.peek() != b"(":
            known = _uid_set(r)
            if r.accept(b" "):
                match = _seq_match(r)
        else:
            match = _seq_match(r)
    r.expect(b")", ") closing QRESYNC")
    return c.Qresync(uid_validity, highest, known, match)


def _uid_set(r: Reader) -> SequenceSet:
    """A sequence set without "*" or "$" (RFC 7162 known-uids, known-uid-set)."""
    if r.peek() in (b"*", b"$"):
        raise BadSyntaxError("expected a set of UIDs")
    seqset = r.seqset()
    if seqset.is_saved or any(x.start is None or x.end is None for x in seqset.ranges):
        raise BadSyntaxError("a known UID set cannot contain * or $")
    return seqset


def _seq_match(r: Reader) -> tuple[SequenceSet, SequenceSet]:
    r.expect(b"(", "( starting the sequence match data")
    numbers = _uid_set(r)
    r.sp()
    uids = _uid_set(r)
    r.expect(b")", ") closing the sequence match data")
    return (numbers, uids)
