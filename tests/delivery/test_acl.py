"""Folder ACLs in Dovecot's dovecot-acl format (delivery/acl.py): the file format, the rights a
user gets, and a Dovecot serving the same Maildir enforcing what our files say."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailstack.delivery import acl
from mailstack.delivery.maildir import MaildirStore

from mailstack.base.errors import UsageError
from mailstack.base.paths import StatePaths
from tests.support.dovecot import DovecotFactory, dovecot_server  # noqa: F401

ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"


def test_rights_letters() -> None:
    assert acl.parse_rights("srl") == "lrs"  # canonical order
    assert acl.parse_rights("cd", allow_obsolete=True) == "kxte"  # RFC 4314 §2.1.1
    with pytest.raises(UsageError, match="unknown right 'z'"):
        acl.parse_rights("lrz")
    with pytest.raises(UsageError, match="unknown right 'c'"):
        acl.parse_rights("c")  # admins type the RFC 4314 letters


def test_no_file_means_the_owner_has_everything() -> None:
    assert acl.rights_of(None, ALICE, ALICE) == acl.ALL_RIGHTS
    assert acl.rights_of(None, BOB, ALICE) == ""


def test_most_specific_identifier_wins() -> None:
    entries = acl.parse_acl(
        "owner lrswipkxtea\nauthenticated lr\nuser=bob@example.com l\nanyone l\n"
    )
    assert acl.rights_of(entries, ALICE, ALICE) == "lrswipkxtea"
    assert acl.rights_of(entries, BOB, ALICE) == "l"  # replaces, not adds to, authenticated
    assert acl.rights_of(entries, CAROL, ALICE) == "lr"
    assert acl.rights_of(acl.parse_acl("anyone lr\n"), CAROL, ALICE) == "lr"
    assert acl.rights_of(acl.parse_acl("user=bob@example.com lr\n"), ALICE, ALICE) == ""


def test_lines_we_do_not_understand_are_kept_but_grant_nothing(tmp_path: Path) -> None:
    (tmp_path / acl.ACL_FILE).write_text(
        "group=staff lrs\n-user=bob@example.com w\nuser=carol@example.com lrq\nowner lra\n"
    )
    entries = acl.read_acl(tmp_path)
    assert entries is not None
    assert acl.rights_of(entries, CAROL, ALICE) == ""  # unknown letter q: the line is inert
    acl.set_rights(tmp_path, f"user={BOB}", "lr")
    text = (tmp_path / acl.ACL_FILE).read_text()
    assert "group=staff lrs\n" in text and "-user=bob@example.com w\n" in text
    assert "user=carol@example.com lrq\n" in text
    assert acl.rights_of(acl.read_acl(tmp_path), BOB, ALICE) == "lr"
    assert stat.S_IMODE((tmp_path / acl.ACL_FILE).stat().st_mode) == 0o600


def test_first_share_keeps_the_owner_in(tmp_path: Path) -> None:
    acl.set_rights(tmp_path, f"user={BOB}", "lrs")
    entries = acl.read_acl(tmp_path)
    assert acl.rights_of(entries, ALICE, ALICE) == acl.ALL_RIGHTS
    acl.set_rights(tmp_path, f"user={BOB}", "")
    assert acl.rights_of(acl.read_acl(tmp_path), BOB, ALICE) == ""


IDENT = st.one_of(
    st.sampled_from([acl.OWNER, acl.AUTHENTICATED, acl.ANYONE]),
    st.from_regex(r"user=[a-z]{1,8}@example\.com", fullmatch=True),
)


@given(st.lists(st.tuples(IDENT, st.sets(st.sampled_from(acl.ALL_RIGHTS))), max_size=6))
def test_serialize_then_parse_is_identity(pairs: list[tuple[str, set[str]]]) -> None:
    entries = [
        acl.Entry(i, acl.parse_rights("".join(r)), f"{i} {acl.parse_rights(''.join(r))}")
        for i, r in pairs
    ]
    assert acl.parse_acl(acl.serialize_acl(entries)) == entries


@given(st.text(max_size=300))
def test_any_file_text_parses(text: str) -> None:
    for entry in acl.parse_acl(text):
        assert entry.rights is None or set(entry.rights) <= set(acl.ALL_RIGHTS)


def test_shared_folders_are_found(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path)
    store = MaildirStore(paths, hostname="mail.example.com")
    for user in (ALICE, BOB):
        store.create_account(user)
    store.create_folder(ALICE, "Projects.2024")
    acl.set_rights(acl.folder_dir(paths.maildir(ALICE), "Projects.2024"), f"user={BOB}", "lr")
    found = list(acl.shared_folders(paths.mail_dir))
    assert [(f.owner, f.folder) for f in found] == [(ALICE, "Projects.2024")]


# -- Dovecot reads the same files -----------------------------------------------------------------
DOVECOT_ACL = """
mail_plugins = $mail_plugins acl
protocol imap {{
  mail_plugins = $mail_plugins imap_acl
}}
plugin {{
  acl = vfile
}}
namespace shared {{
  type = shared
  separator = .
  prefix = shared.%%n.
  location = maildir:%%h
  subscriptions = no
  list = children
}}
# The shared namespace looks up the owner's home: imap (running as nobody, and our passwd
# file has no uid field) may ask auth only when the socket is open to all (Dovecot's own hint).
service auth {{
  unix_listener auth-userdb {{
    mode = 0777
  }}
}}
"""


def test_dovecot_enforces_the_rights_we_wrote(dovecot_server: DovecotFactory) -> None:  # noqa: F811
    paths = StatePaths(dovecot_server.workdir / "state")
    store = MaildirStore(paths, hostname="mail.example.com")
    for user in (ALICE, BOB, CAROL):
        store.create_account(user)
    store.create_folder(ALICE, "Projects")
    store.deliver([(ALICE, "Projects")], b"From: x@example.org\r\nSubject: plan\r\n\r\nhello\r\n")
    acl.set_rights(acl.folder_dir(paths.maildir(ALICE), "Projects"), f"user={BOB}", "lr")
    server = dovecot_server(
        {u: ("pw-" + u, paths.maildir(u)) for u in (ALICE, BOB, CAROL)},
        DOVECOT_ACL.format(),
    )
    name = '"shared.alice.Projects"'
    with server.imap(BOB) as imap:
        typ, data = imap.select(name, readonly=True)
        assert typ == "OK", (data, server.log())
        typ, data = imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK" and b"plan" in data[0][1]
        typ, data = imap.myrights(name)
        assert typ == "OK" and data[0].split()[-1] == b"lr", data
        # lr only: Dovecot opens the folder read-only for Bob.
        typ, _ = imap._simple_command("SELECT", name)
        assert typ == "OK" and "READ-ONLY" in imap.untagged_responses, imap.untagged_responses
    acl.set_rights(acl.folder_dir(paths.maildir(ALICE), "Projects"), f"user={BOB}", "lrst")
    server.grant()
    with server.imap(BOB) as imap:
        typ, data = imap.select(name)
        assert typ == "OK", data
        typ, data = imap.store("1", "+FLAGS", "(\\Deleted)")
        assert typ == "OK" and b"\\Deleted" in data[0], data
    with server.imap(CAROL) as imap:
        typ, data = imap.select(name)
        assert typ == "NO", data  # no rights at all: Carol cannot open it
    with server.imap(ALICE) as imap:
        typ, data = imap.getacl('"Projects"')
        assert typ == "OK", data
        words = data[0].decode().split()[1:]
        rights = {who: set(r) - {"c", "d"} for who, r in zip(words[::2], words[1::2], strict=True)}
        # Dovecot names the owner by address and adds the obsolete c/d letters (RFC 4314 §2.1.1).
        assert rights == {ALICE: set(acl.ALL_RIGHTS), BOB: set("lrst")}, data
