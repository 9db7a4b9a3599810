"""Property tests: the store against a model, and the on-disk codecs round-tripping."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from mailstack.delivery.keywords import (
    MAX_KEYWORDS,
    KeywordMap,
    TooManyKeywordsError,
    flags_from_letters,
    letters_from_flags,
    split_info,
)
from mailstack.delivery.layout import (
    folder_dir_name,
    normalize_folder,
    parse_subscriptions,
    serialize_subscriptions,
)
from mailstack.delivery.maildir import MaildirStore
from mailstack.delivery.store import (
    DEFAULT_FOLDERS,
    INBOX,
    FolderExistsError,
    FolderNotFoundError,
    InvalidFolderNameError,
    StoreError,
)
from mailstack.delivery.uidmap import UidList, UidRecord

from mailstack.base.flags import Flag, FlagMode
from mailstack.base.paths import StatePaths

ALICE = "alice@example.com"
ATOM = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='(){%*"\\]'),
    min_size=1,
    max_size=12,
)
SYSTEM = st.sampled_from([str(f) for f in Flag])
FLAGS = st.frozensets(st.one_of(SYSTEM, st.sampled_from(["$Junk", "$NonJunk", "Work", "$Label1"])))


class StoreModel(RuleBasedStateMachine):
    """Any sequence of deliver/append/store_flags/expunge/reopen matches a dict model."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="maildir-model-"))
        self.store = MaildirStore(StatePaths(self.dir), hostname="model")
        self.store.create_account(ALICE)
        self.model: dict[int, frozenset[str]] = {}
        self.next_uid = 1
        self.uid_validity = self.store.snapshot(ALICE, "INBOX").uid_validity
        self.bytes = 0

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def _any_store(self, fresh: bool) -> MaildirStore:
        # A fresh instance stands for another process: it has listed nothing yet.
        return MaildirStore(StatePaths(self.dir), hostname="other") if fresh else self.store

    @rule(body=st.binary(max_size=200), fresh=st.booleans())
    def deliver(self, body: bytes, fresh: bool) -> None:
        message = b"Subject: x\r\n\r\n" + body
        (ref,) = self._any_store(fresh).deliver([(ALICE, "INBOX")], message)
        assert ref.uid == self.next_uid
        self.model[ref.uid] = frozenset()
        self.next_uid += 1
        self.bytes += len(message.replace(b"\r\n", b"\n"))

    @rule(flags=FLAGS)
    def append(self, flags: frozenset[str]) -> None:
        ref = self.store.append(ALICE, "INBOX", b"Subject: appended\r\n\r\nhi\r\n", flags=flags)
        assert ref.uid == self.next_uid
        self.model[ref.uid] = flags
        self.next_uid += 1
        self.bytes += len(b"Subject: appended\n\nhi\n")

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), flags=FLAGS, mode=st.sampled_from(list(FlagMode)), fresh=st.booleans())
    def store_flags(
        self, data: st.DataObject, flags: frozenset[str], mode: FlagMode, fresh: bool
    ) -> None:
        uids = data.draw(st.lists(st.sampled_from(sorted(self.model)), max_size=4))
        result = self._any_store(fresh).store_flags(ALICE, "INBOX", uids, flags, mode)
        for uid in uids:
            old = self.model[uid]
            self.model[uid] = {
                FlagMode.REPLACE: flags,
                FlagMode.ADD: old | flags,
                FlagMode.REMOVE: old - flags,
            }[mode]
        assert result == {uid: self.model[uid] for uid in uids}

    @rule(
        only=st.none() | st.lists(st.integers(min_value=1, max_value=40), max_size=5),
        fresh=st.booleans(),
    )
    def expunge(self, only: list[int] | None, fresh: bool) -> None:
        gone = self._any_store(fresh).expunge(ALICE, "INBOX", only)
        expected = [
            uid
            for uid, flags in sorted(self.model.items())
            if Flag.DELETED in flags and (only is None or uid in only)
        ]
        assert gone == expected
        for uid in gone:
            del self.model[uid]

    @rule(claim=st.booleans())
    def snapshot(self, claim: bool) -> None:
        self.store.snapshot(ALICE, "INBOX", claim_recent=claim)

    @rule()
    def reopen(self) -> None:
        self.store = MaildirStore(StatePaths(self.dir), hostname="model")

    @invariant()
    def matches_model(self) -> None:
        snap = self.store.snapshot(ALICE, "INBOX")
        assert snap.uid_validity == self.uid_validity
        assert snap.uid_next == self.next_uid
        assert {m.uid: m.flags for m in snap.messages} == self.model
        assert [m.uid for m in snap.messages] == sorted(self.model)


TestStoreModel = StoreModel.TestCase
TestStoreModel.settings = settings(
    max_examples=25,
    stateful_step_count=15,
)


FOLDER = st.lists(st.sampled_from(["a", "b", "Sent"]), min_size=1, max_size=3).map(".".join)
# (a small alphabet, so that names collide, nest and clash often)
FOLDER_OR_INBOX = st.one_of(FOLDER, st.just(INBOX), st.just("INBOX.a"))


class FolderModel(RuleBasedStateMachine):
    """CREATE/DELETE/RENAME/deliver in any order match a {folder: message count} model."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="maildir-folders-"))
        self.store = MaildirStore(StatePaths(self.dir), hostname="model")
        self.store.create_account(ALICE)
        self.model: dict[str, int] = {INBOX: 0, **{name: 0 for name in DEFAULT_FOLDERS}}

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def _parents(self, name: str) -> list[str]:
        parts = name.split(".")
        return [".".join(parts[:i]) for i in range(1, len(parts))]

    def _expect(self, error: type[StoreError] | None, call: object, *args: object) -> None:
        if error is None:
            call(*args)  # type: ignore[operator]
        else:
            with pytest.raises(error):
                call(*args)  # type: ignore[operator]

    @rule(name=FOLDER_OR_INBOX)
    def create(self, name: str) -> None:
        error = FolderExistsError if name in self.model else None
        self._expect(error, self.store.create_folder, ALICE, name)
        if error is None:
            for parent in [*self._parents(name), name]:
                self.model.setdefault(parent, 0)

    @rule(name=FOLDER_OR_INBOX)
    def delete(self, name: str) -> None:
        error: type[StoreError] | None = None
        if name not in self.model:
            error = FolderNotFoundError
        elif name == INBOX:
            error = InvalidFolderNameError
        self._expect(error, self.store.delete_folder, ALICE, name)
        if error is None:
            del self.model[name]

    @rule(data=st.data(), new=FOLDER_OR_INBOX)
    def rename_existing(self, data: st.DataObject, new: str) -> None:
        # Renames of what exists, nested names included: the interesting cases.
        self.rename(data.draw(st.sampled_from(sorted(self.model))), new)

    @rule(old=FOLDER_OR_INBOX, new=FOLDER_OR_INBOX)
    def rename(self, old: str, new: str) -> None:
        error: type[StoreError] | None = None
        moving = [n for n in self.model if n == old or n.startswith(old + ".")]
        if old not in self.model:
            error = FolderNotFoundError
        elif new in self.model or new == INBOX:
            error = FolderExistsError
        elif old != INBOX and new.startswith(old + "."):
            error = InvalidFolderNameError
        elif old != INBOX and any(new + n[len(old) :] in self.model for n in moving):
            error = FolderExistsError
        self._expect(error, self.store.rename_folder, ALICE, old, new)
        if error is not None:
            return
        if old == INBOX:
            for parent in [*self._parents(new), new]:
                self.model.setdefault(parent, 0)
            self.model[new], self.model[INBOX] = self.model[INBOX], 0
            return
        for parent in self._parents(new):
            self.model.setdefault(parent, 0)
        for name in moving:
            self.model[new + name[len(old) :]] = self.model.pop(name)

    @rule(name=FOLDER_OR_INBOX)
    def deliver(self, name: str) -> None:
        error = None if name in self.model else FolderNotFoundError
        self._expect(error, self.store.deliver, [(ALICE, name)], b"Subject: x\r\n\r\nbody\r\n")
        if error is None:
            self.model[name] += 1

    @invariant()
    def matches_model(self) -> None:
        infos = self.store.list_folders(ALICE)
        assert {f.name for f in infos if f.is_selectable} == set(self.model)
        for name, count in self.model.items():
            assert len(self.store.snapshot(ALICE, name).messages) == count, name
        assert self.store.usage_bytes(ALICE) == sum(self.model.values()) * len(
            b"Subject: x\n\nbody\n"
        )


TestFolderModel = FolderModel.TestCase
TestFolderModel.settings = settings(
    max_examples=30,
    stateful_step_count=15,
)


@given(st.lists(ATOM, unique_by=str.casefold, max_size=MAX_KEYWORDS), st.data())
def test_keyword_letters_round_trip(keywords: list[str], data: st.DataObject) -> None:
    kmap = KeywordMap([])
    kmap.add(keywords)
    reread = KeywordMap.parse(kmap.serialize())
    assert reread.defined() == tuple(keywords)
    chosen = data.draw(st.frozensets(st.sampled_from(keywords))) if keywords else frozenset()
    flags = chosen | data.draw(st.frozensets(SYSTEM.filter(lambda f: f != "\\Recent")))
    letters = letters_from_flags(flags, reread)
    assert letters == "".join(sorted(letters))  # Maildir wants ASCII order
    assert flags_from_letters(letters, reread) == flags


def test_twenty_seventh_keyword_is_refused_and_nothing_changes() -> None:
    kmap = KeywordMap([])
    with pytest.raises(TooManyKeywordsError):
        kmap.add(f"k{i}" for i in range(MAX_KEYWORDS + 1))
    assert kmap.defined() == ()
    kmap.add(f"k{i}" for i in range(MAX_KEYWORDS))
    assert kmap.letter_for("k25") == "z"
    assert kmap.add(["K3"]) is False  # known (case-insensitively): no room needed
    with pytest.raises(TooManyKeywordsError):
        kmap.add(["k26"])
    assert kmap.letter_for("k26") is None


def test_split_info_keeps_dovecot_extra_fields() -> None:
    assert split_info("123.M1P2.h,S=5:2,FSa,Xfoo") == ("123.M1P2.h,S=5", "FSa", ",Xfoo")
    assert split_info("123.M1P2.h,S=5") == ("123.M1P2.h,S=5", "", "")


@given(
    st.integers(min_value=1, max_value=2**32 - 1),
    st.lists(st.tuples(st.integers(1, 1000), ATOM.filter(lambda s: ":" not in s)), max_size=10),
)
def test_uidlist_round_trip(uid_validity: int, items: list[tuple[int, str]]) -> None:
    uidlist = UidList(uid_validity=uid_validity)
    uid = 0
    for step, name in items:
        uid += step
        uidlist.records.append(
            UidRecord(uid=uid, name=f"{name}:2,S", ext="W10" if step % 2 else "")
        )
    uidlist.next_uid = uid + 1
    again = UidList.parse(uidlist.serialize())
    assert again == uidlist


def test_uidlist_reads_dovecot_file() -> None:
    text = (
        b"3 V1275660208 N25022 G3085f01b7f11094c501100008c4a11c1\n"
        b"25006 :1276528487.M364837P9451.kurkku,S=1355,W=1394:2,\n"
        b"25017 W2481 :1276533073.M242911P3632.kurkku:2,F\n"
    )
    uidlist = UidList.parse(text)
    assert uidlist.uid_validity == 1275660208
    assert uidlist.next_uid == 25022
    assert uidlist.guid == "3085f01b7f11094c501100008c4a11c1"
    assert [(r.uid, r.base, r.ext) for r in uidlist.records] == [
        (25006, "1276528487.M364837P9451.kurkku,S=1355,W=1394", ""),
        (25017, "1276533073.M242911P3632.kurkku", "W2481"),
    ]
    assert uidlist.serialize() == text
    # A torn append (no final newline) is ignored; appended UIDs move N forward.
    assert UidList.parse(text + b"25030 :x\n25031 :trunc").next_uid == 25031


NAMES = st.lists(
    st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="/&"),
        min_size=1,
        max_size=20,
    ).filter(lambda s: not any(p == "" for p in s.split("."))),
    unique=True,
    max_size=8,
)


@given(NAMES)
def test_subscriptions_round_trip(names: list[str]) -> None:
    assert parse_subscriptions(serialize_subscriptions(names)) == names


@given(st.text(max_size=40))
def test_folder_names_valid_or_rejected(name: str) -> None:
    try:
        normalized = normalize_folder(name)
    except InvalidFolderNameError:
        return
    dir_name = folder_dir_name(normalized)
    assert "/" not in dir_name
    assert dir_name in ("", "." + normalized)
    assert dir_name not in (".", "..")
    assert not normalized.startswith(".")
