"""Message flags in Maildir file names: the ":2," info letters and `dovecot-keywords`.

System flags are the upper-case letters of the Maildir spec (cr.yp.to/proto/maildir.html):
D draft, F flagged, P passed (no IMAP flag, kept as found), R replied (\\Answered), S seen,
T trashed (\\Deleted). Keywords are Dovecot's extension: lower-case letters a..z, where letter
number i means the keyword on the line "i <keyword>" of the folder's `dovecot-keywords` file.
So at most 26 keywords per folder fit in file names. Dovecot keeps any more only in its own
index, which mutt, Dovecot's Maildir-only readers and we cannot see; so rather than answer OK
and drop them (what a client would not notice until it looked), `KeywordMap.add` refuses a
keyword that does not fit: `TooManyKeywordsError`, IMAP `NO [LIMIT]` (RFC 5530 §3), before
anything changes.

Letters are written in ASCII order (upper case before lower case), as the spec asks.
This module is pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mailstack.delivery.store import StoreError

from mailstack.base.flags import Flag

MAX_KEYWORDS = 26  # letters a..z


class TooManyKeywordsError(StoreError):
    code = "LIMIT"


_LETTER_OF_FLAG: dict[str, str] = {
    Flag.DRAFT: "D",
    Flag.FLAGGED: "F",
    Flag.ANSWERED: "R",
    Flag.SEEN: "S",
    Flag.DELETED: "T",
}
_FLAG_OF_LETTER = {letter: flag for flag, letter in _LETTER_OF_FLAG.items()}
_SYSTEM_BY_LOWER = {str(f).lower(): str(f) for f in Flag}


def canonical_flag(flag: str) -> str | None:
    """System flags compare case-insensitively (RFC 9051 §2.3.2); None for \\Recent etc."""
    if flag.startswith("\\"):
        return _SYSTEM_BY_LOWER.get(flag.lower())
    return flag


@dataclass(slots=True)
class KeywordMap:
    """The keywords of one folder in letter order (index 0 is "a")."""

    names: list[str]

    @classmethod
    def parse(cls, data: bytes) -> KeywordMap:
        names: list[str] = []
        for line in data.decode("utf-8", "replace").splitlines():
            index, _, name = line.partition(" ")
            if not index.isdigit() or not name or int(index) >= MAX_KEYWORDS:
                continue  # Dovecot skips malformed lines too
            while len(names) <= int(index):
                names.append("")
            names[int(index)] = name
        return cls(names)

    def serialize(self) -> bytes:
        return "".join(f"{i} {name}\n" for i, name in enumerate(self.names) if name).encode()

    def _index(self, keyword: str) -> int | None:
        # Keywords compare case-insensitively, as system flags do (clients send "$junk" and
        # "$Junk" for one thing): they share one letter, spelled as first stored.
        folded = keyword.casefold()
        for i, name in enumerate(self.names):
            if name and name.casefold() == folded:
                return i
        return None

    def letter_for(self, keyword: str) -> str | None:
        index = self._index(keyword)
        return None if index is None else chr(ord("a") + index)

    def canonical(self, keyword: str) -> str:
        """The stored spelling of `keyword` (itself if it is not stored)."""
        index = self._index(keyword)
        return keyword if index is None else self.names[index]

    def add(self, keywords: Iterable[str]) -> bool:
        """Give letters to unknown keywords; True if anything changed. TooManyKeywordsError,
        with nothing changed, when they do not all fit in the 26 letters."""
        new: dict[str, str] = {}
        for keyword in keywords:
            if self._index(keyword) is None:
                new.setdefault(keyword.casefold(), keyword)
        free = self.names.count("") + MAX_KEYWORDS - len(self.names)
        if len(new) > free:
            raise TooManyKeywordsError(
                f"a mailbox holds at most {MAX_KEYWORDS} keywords "
                f"({MAX_KEYWORDS - free} in use; Dovecot's Maildir letters a-z)"
            )
        for keyword in new.values():
            if "" in self.names:
                self.names[self.names.index("")] = keyword
            else:
                self.names.append(keyword)
        return bool(new)

    def defined(self) -> tuple[str, ...]:
        return tuple(name for name in self.names if name)


def split_info(file_name: str) -> tuple[str, str, str]:
    """ "base:2,FS,extra" -> ("base", "FS", ",extra"); no info -> ("base", "", "")."""
    base, sep, info = file_name.partition(":")
    if not sep or not info.startswith("2,"):
        return base, "", ""
    letters, comma, extra = info[2:].partition(",")
    return base, letters, comma + extra


def flags_from_letters(letters: str, keywords: KeywordMap) -> frozenset[str]:
    flags: set[str] = set()
    for letter in letters:
        if letter in _FLAG_OF_LETTER:
            flags.add(_FLAG_OF_LETTER[letter])
        elif "a" <= letter <= "z":
            index = ord(letter) - ord("a")
            if index < len(keywords.names) and keywords.names[index]:
                flags.add(keywords.names[index])
    return frozenset(flags)


def letters_from_flags(flags: Iterable[str], keywords: KeywordMap, *, keep: str = "") -> str:
    """Info letters for `flags`; `keep` are letters of the old name we have no flag for (P)."""
    letters = {c for c in keep if c.isupper() and c not in _FLAG_OF_LETTER}
    for flag in flags:
        if flag in _LETTER_OF_FLAG:
            letters.add(_LETTER_OF_FLAG[flag])
        elif not flag.startswith("\\") and (letter := keywords.letter_for(flag)) is not None:
            letters.add(letter)
    return "".join(sorted(letters))


def file_name_with_flags(base: str, letters: str, extra: str = "") -> str:
    return f"{base}:2,{letters}{extra}"
