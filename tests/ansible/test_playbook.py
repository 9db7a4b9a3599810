"""The Ansible role, run for real: `ansible-playbook -i localhost, -c local ansible/playbook.yml`.

As root on this machine, into a throwaway virtualenv and state dir, loopback high ports, two
users and an alias to both, `mailstack_manage_service: false`. Then the `mailstack` of that
virtualenv serves from that state dir (as the mailstack user), a mail to the alias reaches both
users over IMAP, a second run changes nothing, and a changed password variable changes exactly
that. The unit the role installed passes `systemd-analyze verify`.
"""

from __future__ import annotations

import imaplib
import pwd
import shutil
import smtplib
import ssl
import subprocess
from collections.abc import Iterator

import pytest

from tests.ansible.conftest import PASSWORDS, Deployed, variables_for
from tests.ansible.support import CAP_NET_BIND_SERVICE, ServeFrom, proc_ids, run_playbook

pytestmark = [pytest.mark.external, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def served(deployed: Deployed) -> Iterator[ServeFrom]:
    """serve from the role's virtualenv, started as root: it runs itself as mailstack."""
    argv = [deployed.mailstack, "--dir", str(deployed.state), "serve"]
    with ServeFrom(argv, deployed.state) as proc:
        yield proc


def _imap_inbox(deployed: Deployed, user: str, password: str) -> list[bytes]:
    # The imported certificate is served: verified against its CA, not the one init made.
    context = ssl.create_default_context(cafile=str(deployed.work / "public/ca.pem"))
    context.check_hostname = False  # connected by IP; the chain is still verified
    with imaplib.IMAP4_SSL(
        "127.0.0.1", deployed.port("imaps"), ssl_context=context, timeout=30
    ) as imap:
        imap.login(user, password)
        imap.select("INBOX", readonly=True)
        _, data = imap.uid("SEARCH", "ALL")
        messages = []
        for uid in data[0].split():
            _, parts = imap.uid("FETCH", uid, "(BODY.PEEK[])")
            messages.append(bytes(parts[0][1]))  # type: ignore[index]
        return messages


def _login_fails(deployed: Deployed, user: str, password: str) -> bool:
    try:
        _imap_inbox(deployed, user, password)
    except imaplib.IMAP4.error:
        return True
    return False


def test_first_run_creates_the_deployment_owned_by_mailstack(deployed: Deployed) -> None:
    first = deployed.first
    # (whether "Create the mailstack user" changes depends on the machine: an earlier run made it)
    for task in (
        "Install mailstack and its dependencies",
        "Create the deployment (once)",
        "Add the missing accounts",
        "Add the aliases and targets that are missing",
        "Import the staged certificate",
        "Install the systemd unit",
    ):
        assert task in first.changed_tasks, first.explain()
    assert "_dmarc" in first.output and "IN\\tMX\\t10 mail.example.com." in first.output
    mailstack = pwd.getpwnam("mailstack")
    assert mailstack.pw_uid != 0
    # Everything the CLI wrote as root (init, user add) belongs to the user serve runs as.
    for path in [deployed.state, *deployed.state.rglob("*")]:
        st = path.lstat()
        assert (st.st_uid, st.st_gid) == (mailstack.pw_uid, mailstack.pw_gid), path
    assert oct(deployed.state.stat().st_mode & 0o777) == "0o750"
    assert not (deployed.state / "tls/ca.pem").exists()  # tls import retired init's own CA
    shown = subprocess.run(
        [deployed.mailstack, "--dir", str(deployed.state), "config", "show"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "max_message_size = 10485760" in shown  # mailstack_config, merged


def test_alias_mail_reaches_both_users_over_imap(deployed: Deployed, served: ServeFrom) -> None:
    assert served.proc is not None
    uid, euid, ambient = proc_ids(served.proc.pid)
    assert uid == euid == pwd.getpwnam("mailstack").pw_uid  # not root
    assert ambient == CAP_NET_BIND_SERVICE
    message = b"Subject: to the team\r\nFrom: someone@example.org\r\n\r\nhello team\r\n"
    with smtplib.SMTP("127.0.0.1", deployed.port("smtp"), timeout=30) as smtp:
        assert smtp.sendmail("someone@example.org", ["team@example.com"], message) == {}
    for user, password in PASSWORDS.items():
        inbox = _imap_inbox(deployed, user, password)
        assert [m for m in inbox if b"hello team" in m], (user, inbox)


def test_second_run_changes_nothing(deployed: Deployed, served: ServeFrom) -> None:
    again = run_playbook(deployed.work, deployed.variables, name="second")
    assert (again.returncode, again.failed) == (0, 0), again.explain()
    assert (again.changed, again.changed_tasks) == (0, []), again.explain()


SECOND_PASSWORDS = {**PASSWORDS, "bob@example.com": "bob-second-pw"}


def _later(deployed: Deployed, **extra: object) -> dict[str, object]:
    """The variables of the runs after the second: bob's password changed, plus `extra`."""
    ports = deployed.variables["mailstack_ports"]
    assert isinstance(ports, dict)
    wheel = str(deployed.variables["mailstack_source"])
    return {**variables_for(deployed.work, wheel, SECOND_PASSWORDS, ports), **extra}


def test_changed_password_changes_exactly_that(deployed: Deployed, served: ServeFrom) -> None:
    variables = _later(
        deployed,
        # on a host where systemd is not PID 1 the play says why it does not start the unit
        mailstack_manage_service=True,
        # check runs (its table is shown) and changes nothing
        mailstack_check=True,
        mailstack_check_args=["--only", "config", "--only", "files"],
    )
    third = run_playbook(deployed.work, variables, name="third")
    assert (third.returncode, third.failed) == (0, 0), third.explain()
    assert (third.changed, third.changed_tasks) == (1, ["Set the passwords that differ"]), (
        third.explain()
    )
    assert "systemd is not PID 1 on this host" in third.output
    assert "files.owner" in third.output and "belongs to mailstack" in third.output
    assert "bob-second-pw" not in third.output  # no_log: passwords never reach the log
    assert _imap_inbox(deployed, "bob@example.com", "bob-second-pw")  # at once, no restart
    assert _login_fails(deployed, "bob@example.com", "bob-first-pw")
    assert _imap_inbox(deployed, "alice@example.com", "alice-first-pw")


def test_strict_check_fails_the_play(deployed: Deployed) -> None:
    variables = _later(
        deployed,
        mailstack_check=True,
        mailstack_check_strict=True,
        mailstack_check_args=["--only", "dns", "--resolver", "127.0.0.1:9"],  # nobody answers
    )
    fourth = run_playbook(deployed.work, variables, name="fourth")
    assert (fourth.failed, fourth.changed) == (1, 0), fourth.explain()
    assert fourth.returncode != 0
    assert "dns.resolver" in fourth.output  # the table is shown before the play fails
    assert "mailstack check failed: see the table above" in fourth.output


def test_installed_unit_passes_systemd_analyze_verify(deployed: Deployed) -> None:
    unit = deployed.work / "mailstack.service"
    text = unit.read_text()
    assert "User=mailstack" in text
    assert f"ExecStart={deployed.mailstack} --dir {deployed.state} serve" in text
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (Debian package systemd) is needed"
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
