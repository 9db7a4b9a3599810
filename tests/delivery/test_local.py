"""Local delivery (delivery/local.py): one copy per mailbox, all or nothing; the LDA command."""

from __future__ import annotations

import asyncio
import mailbox
from pathlib import Path

import pytest
from mailstack.delivery.local import LocalDelivery, LocalResult, Outcome, deliver_to
from mailstack.delivery.store import QuotaExceededError

from mailstack.lda import EX_DATAERR, EX_NOUSER, EX_OK, EX_TEMPFAIL, EX_USAGE
from tests.conftest import Cli, run_cli
from tests.support.smtpserver import SMALL_QUOTA_USER, build_context

MSG = b"From: x@example.net\r\nSubject: local\r\n\r\nbody\r\n"


def stored(root: Path, user: str, folder: str = "INBOX") -> list[bytes]:
    local, _, domain = user.partition("@")
    path = root / "mail" / domain / local
    md = mailbox.Maildir(
        str(path if folder == "INBOX" else path / f".{folder}"), factory=None, create=False
    )
    return [md.get_bytes(k) for k in md.iterkeys()]


def test_one_copy_per_mailbox_with_its_own_delivered_to(tmp_path: Path) -> None:
    ctx, _ = build_context(tmp_path)
    agent = LocalDelivery(ctx.accounts, ctx.store)
    recipients = [
        (r, ctx.accounts.resolve(r).mailboxes)
        for r in ("alice@example.com", "team@example.com", "x@example.org")
    ]
    done = agent.deliver(
        mail_from="x@example.net",
        recipients=recipients,
        message=MSG,
        prefix_fields=["X-Trace: one"],
        folder="Junk",
    )
    assert sorted(done.mailboxes) == ["alice@example.com", "bob@example.com", "carol@example.org"]
    for user in done.mailboxes:
        (copy,) = stored(tmp_path, user, "Junk")
        assert copy == (
            f"Return-Path: <x@example.net>\nDelivered-To: {user}\nX-Trace: one\n".encode()
            + MSG.replace(b"\r\n", b"\n")
        )
        assert stored(tmp_path, user) == []


def test_failure_on_a_later_mailbox_takes_back_the_earlier_copies(tmp_path: Path) -> None:
    ctx, _ = build_context(tmp_path)
    agent = LocalDelivery(ctx.accounts, ctx.store)
    big = MSG + b"x" * 70 * 100
    with pytest.raises(QuotaExceededError):
        agent.deliver(
            mail_from="",
            recipients=[
                ("alice@example.com", ("alice@example.com", "bob@example.com")),
                (SMALL_QUOTA_USER, (SMALL_QUOTA_USER,)),
            ],
            message=big,
        )
    for user in ("alice@example.com", "bob@example.com", SMALL_QUOTA_USER):
        assert stored(tmp_path, user) == []
        assert ctx.store.snapshot(user, "INBOX").messages == ()


@pytest.mark.parametrize("blocking", [True, False], ids=["deliver", "deliver_async"])
def test_a_deleted_junk_folder_sends_the_copy_to_inbox(tmp_path: Path, blocking: bool) -> None:
    ctx, _ = build_context(tmp_path)
    ctx.store.delete_folder("alice@example.com", "Junk")
    agent = LocalDelivery(ctx.accounts, ctx.store)
    recipients = [("alice@example.com", ("alice@example.com",))]
    if blocking:
        done = agent.deliver(mail_from="", recipients=recipients, message=MSG, folder="Junk")
    else:
        done = asyncio.run(
            agent.deliver_async(mail_from="", recipients=recipients, message=[MSG], folder="Junk")
        )
    assert [(r.user, r.folder) for r in done.refs] == [("alice@example.com", "INBOX")]
    assert len(stored(tmp_path, "alice@example.com")) == 1


def test_deliver_to_answers_a_typed_outcome(tmp_path: Path) -> None:
    ctx, _ = build_context(tmp_path)

    def to(recipient: str, message: bytes = MSG) -> LocalResult:
        return deliver_to(
            ctx.accounts, ctx.store, hostname="mx.test", recipient=recipient, message=message
        )

    assert to("team@example.com") == LocalResult(
        Outcome.DELIVERED, mailboxes=("alice@example.com", "bob@example.com")
    )
    assert to("nobody@example.com").outcome is Outcome.NO_SUCH_USER
    assert to("alice@example.com", b"From sender Mon\n\n").outcome is Outcome.BAD_MESSAGE
    over = to(SMALL_QUOTA_USER, MSG + b"x" * 70 * 100)
    assert over.outcome is Outcome.TRY_LATER
    assert "try again later" in over.problem
    (copy,) = stored(tmp_path, "bob@example.com")
    assert copy.startswith(b"Return-Path: <>\nDelivered-To: bob@example.com\nReceived: by mx.test ")


def test_lda_exit_codes(tmp_path: Path) -> None:
    root = tmp_path / "state"
    ctx, _ = build_context(root)
    ctx.accounts.close()
    # The config lives in the test template only as a dict; write the file the CLI reads.
    (root / "mailstack.toml").write_text(
        '[server]\nhostname = "mail.example.com"\ndomains = ["example.com", "example.org"]\n'
    )
    text = MSG.decode()

    ok = run_cli(root, "deliver", "team@example.com", "--from", "x@example.net", input=text)
    assert (ok.returncode, ok.stderr) == (EX_OK, "")
    for user in ("alice@example.com", "bob@example.com"):
        (copy,) = stored(root, user)
        assert copy.startswith(b"Return-Path: <x@example.net>\nDelivered-To: " + user.encode())
        assert b"\nReceived: by mail.example.com (mailstack deliver) id " in copy
        assert copy.endswith(MSG.replace(b"\r\n", b"\n"))

    catch_all = run_cli(root, "deliver", "whoever@example.org", input="From x Mon\n" + text)
    assert catch_all.returncode == EX_OK
    (copy,) = stored(root, "carol@example.org")
    assert b"From x Mon" not in copy  # the mbox separator line is not part of the message

    unknown = run_cli(root, "deliver", "nobody@example.com", input=text)
    assert unknown.returncode == EX_NOUSER
    assert unknown.stderr == "error: no such local recipient: nobody@example.com\n"

    for args in ((), ("not-an-address",)):
        usage = run_cli(root, "deliver", *args, input=text)
        assert usage.returncode == EX_USAGE
        assert usage.stderr.startswith("error: ")

    assert run_cli(root, "deliver", "alice@example.com", input="\n").returncode == EX_DATAERR

    full = run_cli(root, "deliver", SMALL_QUOTA_USER, input=text + "x" * 70 * 100 + "\n")
    assert full.returncode == EX_TEMPFAIL
    assert "quota" in full.stderr
    assert stored(root, SMALL_QUOTA_USER) == []

    nowhere = run_cli(tmp_path / "missing", "deliver", "alice@example.com", input=text)
    assert nowhere.returncode == EX_TEMPFAIL
    assert nowhere.stderr.startswith("error: ")


def test_cli_fixture_is_compatible(cli: Cli, deployment_dir: Path) -> None:
    # A deployment made by `init` + `user add`, delivered to through the real command.
    assert cli("user", "add", "ann@example.com", "--password-stdin", input="pw\n").returncode == 0
    result = cli("deliver", "ann@example.com", input=MSG.decode())
    assert result.returncode == EX_OK, result.stderr
    assert len(stored(deployment_dir, "ann@example.com")) == 1
