"""Live listener checks: connect like a client to each configured address, as the world would.

`smtp.*` (RFC 5321): the greeting and EHLO name the hostname, STARTTLS (RFC 3207) negotiates
with the certificate in tls/fullchain.pem (the peer certificate is compared byte for byte, so
a serve that was not reloaded after a renewal shows up), and port 25 offers no AUTH (RFC 6409
§4: authentication belongs on submission). `submission.*` (RFC 6409, RFC 8314): AUTH only
after TLS; skipped while this version has no submission service. `imap.*` (RFC 9051): the
greeting, STARTTLS and implicit TLS; the probe login is in `probe`. `relay.open`: an
unauthenticated RCPT to a foreign domain must be refused (RFC 5321 §3.6.2, RFC 2505 §2.2).

A listener on 0.0.0.0 (or ::) is reached at 127.0.0.1 (::1). TLS handshakes do not verify
the chain here (tls.* judges the files); they only establish which certificate is served.
Every connection has a timeout; nothing here raises for what it finds.
"""

from __future__ import annotations

import contextlib
import imaplib
import smtplib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography.hazmat.primitives.serialization import Encoding

from mailstack.base.config import Config, format_hostport
from mailstack.base.paths import StatePaths
from mailstack.checks import GROUPS, Finding, failed, passed, skip_group, skipped
from mailstack.keys import load_chain

# Used as the EHLO name: an address literal is always acceptable (RFC 5321 §4.1.3).
EHLO_NAME = "[127.0.0.1]"
# The foreign domain of the relay test (RFC 2606 reserved: mail to it can never be delivered).
RELAY_DOMAINS = ("example.net", "example.org")


def connect_host(host: str) -> str:
    """Where a client on this machine reaches a listener bound to `host`."""
    if host in ("", "0.0.0.0"):  # noqa: S104 - comparing, not binding
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def client_tls() -> ssl.SSLContext:
    """Handshake without verification: we want to see the certificate, tls.* judges it."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def expected_leaf(paths: StatePaths) -> bytes | None:
    try:
        return load_chain(paths.tls_cert.read_bytes())[0].public_bytes(Encoding.DER)
    except Exception:  # missing or unreadable: tls.chain and files.present say so
        return None


def cert_finding(
    id_: str, where: str, peer: bytes | None, leaf: bytes | None, paths: StatePaths
) -> Finding:
    if leaf is None:
        return skipped(id_, f"{where}: TLS works, but {paths.tls_cert} cannot be read to compare")
    if peer != leaf:
        return failed(
            id_,
            f"{where}: TLS works, but the server presents another certificate "
            f"than {paths.tls_cert}",
            "reload serve so it reads the current files (`systemctl reload mailstack`"
            " or `kill -HUP <pid of mailstack serve>`); if another program holds the "
            "port, stop it",
        )
    return passed(id_, f"{where}: TLS with the certificate of {paths.tls_cert.name}")


def _down(id_: str, service: str, where: str, exc: BaseException) -> Finding:
    reason = (
        exc.strerror
        if isinstance(exc, OSError) and exc.strerror
        else str(exc) or type(exc).__name__
    )
    return failed(
        id_,
        f"{where}: cannot connect: {reason}",
        "start the server (`systemctl start mailstack`, or `mailstack serve`) and "
        f'read its log; it must listen on listen.{service} = ["{where}"]',
    )


def unknown_port(service: str, where: str, ids: tuple[str, ...]) -> list[Finding]:
    """A listener on port 0 gets its port when serve starts: nothing here can know it."""
    return [
        skipped(
            i,
            f"{where}: listen.{service} has port 0 (chosen by serve at start), so "
            "check cannot know where to connect",
        )
        for i in ids
    ]


def _first_word(text: bytes | str) -> str:
    s = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    parts = s.split()
    return parts[0].lower().rstrip(".") if parts else ""


@dataclass
class _Targets:
    cfg: Config
    paths: StatePaths
    timeout_s: float

    def each(self, service: str) -> Iterator[tuple[str, str, int]]:
        for host, port in self.cfg.listeners(service):
            target = connect_host(host)
            yield format_hostport(target, port), target, port


# -- SMTP on 25 ---------------------------------------------------------------------------------


def check_smtp(cfg: Config, paths: StatePaths, timeout_s: float) -> list[Finding]:
    targets = _Targets(cfg, paths, timeout_s)
    if not cfg.listeners("smtp"):
        return skip_group("smtp", "listen.smtp is empty: no MX listener configured")
    out: list[Finding] = []
    for where, host, port in targets.each("smtp"):
        if port == 0:
            out += unknown_port("smtp", where, GROUPS["smtp"])
            continue
        out += _smtp_one(cfg, paths, where, host, port, timeout_s)
    return out


def _smtp_client(timeout_s: float, server_name: str) -> smtplib.SMTP:
    smtp = smtplib.SMTP(timeout=timeout_s, local_hostname=EHLO_NAME)
    # smtplib takes the TLS server name (SNI) from the constructor's host, which we do not
    # pass so that connect() can report the greeting: send the hostname, as an MTA would.
    smtp._host = server_name  # type: ignore[attr-defined]
    return smtp


def _smtp_one(
    cfg: Config, paths: StatePaths, where: str, host: str, port: int, timeout_s: float
) -> list[Finding]:
    hostname = cfg.server.hostname.lower()
    ids = ("smtp.banner", "smtp.ehlo", "smtp.starttls", "smtp.auth")
    smtp = _smtp_client(timeout_s, cfg.server.hostname)
    try:
        code, greeting = smtp.connect(host, port)
    except (OSError, smtplib.SMTPException) as exc:
        smtp.close()
        return [
            _down("smtp.banner", "smtp", where, exc),
            *(skipped(i, f"{where}: no connection") for i in ids[1:]),
        ]
    out: list[Finding] = []
    fix_name = (
        f'set server.hostname = "{cfg.server.hostname}" in mailstack.toml and restart '
        f"serve; if another program answers on {where}, stop it"
    )
    with contextlib.closing(smtp):
        if code != 220 or _first_word(greeting) != hostname:
            out.append(
                failed(
                    "smtp.banner",
                    f"{where}: greeting {code} "
                    f"{greeting.decode('utf-8', 'replace')!r} does not name "
                    f"{hostname}",
                    fix_name,
                )
            )
        else:
            out.append(passed("smtp.banner", f"{where}: 220 {_first_word(greeting)}"))
        try:
            code, reply = smtp.ehlo()
            if code != 250 or _first_word(reply) != hostname:
                out.append(
                    failed(
                        "smtp.ehlo",
                        f"{where}: EHLO answered {code} {_first_word(reply)!r}, not {hostname}",
                        fix_name,
                    )
                )
            else:
                out.append(passed("smtp.ehlo", f"{where}: EHLO names {hostname}"))
            auth_plain = smtp.has_extn("auth")
            out += _smtp_tls(smtp, paths, where)
            auth_tls = smtp.has_extn("auth") if smtp.sock is not None else False
        except (OSError, smtplib.SMTPException) as exc:
            got = {f.id for f in out}
            return out + [
                failed(i, f"{where}: the session broke: {exc}", "read serve's log for the error")
                for i in ids
                if i not in got
            ]
        if auth_plain or auth_tls:
            when = (
                "before and after"
                if auth_plain and auth_tls
                else "before"
                if auth_plain
                else "after"
            )
            out.append(
                failed(
                    "smtp.auth",
                    f"{where}: AUTH is offered on the MX port ({when} "
                    "STARTTLS): password guessing gets a target, and clients may "
                    "submit where they should not",
                    "offer AUTH only on submission (587/465); if another program "
                    f"answers on {where}, stop it",
                )
            )
        else:
            out.append(passed("smtp.auth", f"{where}: no AUTH offered"))
        with contextlib.suppress(OSError, smtplib.SMTPException):
            smtp.quit()
    return out


def _smtp_tls(smtp: smtplib.SMTP, paths: StatePaths, where: str) -> list[Finding]:
    if not smtp.has_extn("starttls"):
        return [
            failed(
                "smtp.starttls",
                f"{where}: STARTTLS is not offered: mail to you travels in clear text",
                "make sure tls/fullchain.pem and tls/privkey.pem exist "
                "and restart serve; if another program answers here, stop it",
            )
        ]
    try:
        smtp.starttls(context=client_tls())
    except (ssl.SSLError, smtplib.SMTPException, OSError) as exc:
        return [
            failed(
                "smtp.starttls",
                f"{where}: STARTTLS failed: {exc}",
                "check serve's log and `mailstack check --only tls`",
            )
        ]
    sock = smtp.sock
    peer = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
    finding = cert_finding("smtp.starttls", where, peer, expected_leaf(paths), paths)
    smtp.ehlo()
    return [finding]


# -- relay --------------------------------------------------------------------------------------


def check_relay(
    cfg: Config, paths: StatePaths, domains: list[str], timeout_s: float
) -> list[Finding]:
    listeners = cfg.listeners("smtp")
    if not listeners:
        return [skipped("relay.open", "listen.smtp is empty: nothing to relay through")]
    host, port = connect_host(listeners[0][0]), listeners[0][1]
    where = format_hostport(host, port)
    if port == 0:
        return unknown_port("smtp", where, ("relay.open",))
    foreign = next(d for d in RELAY_DOMAINS if d not in domains)
    sender, rcpt = f"relay-check@{foreign}", f"relay-check@{foreign}"
    smtp = smtplib.SMTP(timeout=timeout_s, local_hostname=EHLO_NAME)
    try:
        smtp.connect(host, port)
    except (OSError, smtplib.SMTPException) as exc:
        smtp.close()
        return [skipped("relay.open", f"{where}: cannot connect ({exc}); see smtp.banner")]
    with contextlib.closing(smtp):
        try:
            smtp.ehlo()
            code, reply = smtp.mail(sender)
            if code >= 400:
                return [
                    skipped(
                        "relay.open",
                        f"{where}: MAIL FROM:<{sender}> was refused "
                        f"({code} {reply.decode('utf-8', 'replace')}), so relaying "
                        "could not be tried",
                    )
                ]
            code, reply = smtp.rcpt(rcpt)
            with contextlib.suppress(OSError, smtplib.SMTPException):
                smtp.rset()
                smtp.quit()
        except (OSError, smtplib.SMTPException) as exc:
            return [skipped("relay.open", f"{where}: the session broke ({exc})")]
    text = f"{code} {reply.decode('utf-8', 'replace')}"
    if 200 <= code < 300:
        return [
            failed(
                "relay.open",
                f"{where}: OPEN RELAY: an unauthenticated client may send "
                f"to {rcpt} (RCPT answered {text}); spammers will use it within hours",
                "the MX must refuse recipients outside the hosted domains unless the "
                "client authenticated (554 5.7.1): stop whatever program answers on "
                f"{where} instead of mailstack, or remove the relay rule in front of it",
            )
        ]
    return [passed("relay.open", f"{where}: relaying to {foreign} is refused ({text})")]


# -- submission ---------------------------------------------------------------------------------


def check_submission(cfg: Config, paths: StatePaths, timeout_s: float) -> list[Finding]:
    targets = _Targets(cfg, paths, timeout_s)
    out: list[Finding] = []
    if not cfg.listeners("submission"):
        out += [
            skipped("submission.starttls", "listen.submission is empty"),
            skipped("submission.auth", "listen.submission is empty"),
        ]
    for where, host, port in targets.each("submission"):
        if port == 0:
            out += unknown_port("submission", where, ("submission.starttls", "submission.auth"))
            continue
        out += _submission_starttls(cfg, paths, where, host, port, timeout_s)
    if not cfg.listeners("submissions"):
        out.append(skipped("submission.tls", "listen.submissions is empty"))
    for where, host, port in targets.each("submissions"):
        if port == 0:
            out += unknown_port("submissions", where, ("submission.tls",))
            continue
        out.append(_submissions(paths, where, host, port, timeout_s))
    return out


def _submission_starttls(
    cfg: Config, paths: StatePaths, where: str, host: str, port: int, timeout_s: float
) -> list[Finding]:
    smtp = _smtp_client(timeout_s, cfg.server.hostname)
    try:
        smtp.connect(host, port)
    except (OSError, smtplib.SMTPException) as exc:
        smtp.close()
        return [
            _down("submission.starttls", "submission", where, exc),
            skipped("submission.auth", f"{where}: no connection"),
        ]
    out: list[Finding] = []
    with contextlib.closing(smtp):
        try:
            smtp.ehlo()
            if smtp.has_extn("auth"):
                auth = failed(
                    "submission.auth",
                    f"{where}: AUTH is offered before STARTTLS: "
                    "passwords could cross the network in clear text",
                    "offer AUTH only after STARTTLS (RFC 6409, RFC 8314)",
                )
            else:
                # RFC 4954 §4: a server refusing AUTH before TLS answers 530 5.7.0 or 538.
                code, _reply = smtp.docmd("AUTH", "PLAIN AGNoZWNrAGNoZWNr")  # "\0check\0check"
                auth = (
                    passed("submission.auth", f"{where}: AUTH before TLS is refused ({code})")
                    if code >= 500
                    else failed(
                        "submission.auth",
                        f"{where}: AUTH before STARTTLS answered {code}",
                        "AUTH must be refused until STARTTLS (530 5.7.0)",
                    )
                )
            out += _smtp_tls_for(smtp, paths, where, "submission.starttls")
            out.append(auth)
            with contextlib.suppress(OSError, smtplib.SMTPException):
                smtp.quit()
        except (OSError, smtplib.SMTPException) as exc:
            got = {f.id for f in out}
            out += [
                failed(i, f"{where}: the session broke: {exc}", "read serve's log")
                for i in ("submission.starttls", "submission.auth")
                if i not in got
            ]
    return out


def _smtp_tls_for(smtp: smtplib.SMTP, paths: StatePaths, where: str, id_: str) -> list[Finding]:
    if not smtp.has_extn("starttls"):
        return [failed(id_, f"{where}: STARTTLS is not offered", "restart serve; check its log")]
    smtp.starttls(context=client_tls())
    sock = smtp.sock
    peer = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
    return [cert_finding(id_, where, peer, expected_leaf(paths), paths)]


def _submissions(paths: StatePaths, where: str, host: str, port: int, timeout_s: float) -> Finding:
    try:
        smtp = smtplib.SMTP_SSL(
            host, port, timeout=timeout_s, local_hostname=EHLO_NAME, context=client_tls()
        )
    except (OSError, smtplib.SMTPException) as exc:
        return _down("submission.tls", "submissions", where, exc)
    with contextlib.closing(smtp):
        sock = smtp.sock
        peer = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        with contextlib.suppress(OSError, smtplib.SMTPException):
            smtp.quit()
    return cert_finding("submission.tls", where, peer, expected_leaf(paths), paths)


# -- IMAP ---------------------------------------------------------------------------------------


def check_imap(cfg: Config, paths: StatePaths, timeout_s: float) -> list[Finding]:
    """imap.banner and imap.starttls per IMAP listener, imap.tls per IMAPS listener."""
    targets = _Targets(cfg, paths, timeout_s)
    out: list[Finding] = []
    if not cfg.listeners("imap"):
        out += [
            skipped("imap.banner", "listen.imap is empty"),
            skipped("imap.starttls", "listen.imap is empty"),
        ]
    for where, host, port in targets.each("imap"):
        if port == 0:
            out += unknown_port("imap", where, ("imap.banner", "imap.starttls"))
            continue
        out += _imap_one(paths, where, host, port, timeout_s)
    if not cfg.listeners("imaps"):
        out.append(skipped("imap.tls", "listen.imaps is empty"))
    for where, host, port in targets.each("imaps"):
        if port == 0:
            out += unknown_port("imaps", where, ("imap.tls",))
            continue
        out.append(_imaps_one(paths, where, host, port, timeout_s))
    return out


def _imap_one(
    paths: StatePaths, where: str, host: str, port: int, timeout_s: float
) -> list[Finding]:
    try:
        imap = imaplib.IMAP4(host, port, timeout=timeout_s)
    except (OSError, imaplib.IMAP4.error) as exc:
        return [
            _down("imap.banner", "imap", where, exc),
            skipped("imap.starttls", f"{where}: no connection"),
        ]
    out: list[Finding] = []
    try:
        welcome = imap.welcome.decode("utf-8", "replace")
        if not welcome.startswith("* OK"):
            out.append(
                failed(
                    "imap.banner",
                    f"{where}: greeting {welcome!r} is not * OK",
                    "restart serve and read its log; if another program answers "
                    f"on {where}, stop it",
                )
            )
        else:
            out.append(passed("imap.banner", f"{where}: {welcome[:60]}"))
        if "STARTTLS" not in imap.capabilities:
            out.append(
                failed(
                    "imap.starttls",
                    f"{where}: STARTTLS is not offered: clients would send passwords in clear text",
                    "make sure the TLS files exist and restart serve",
                )
            )
        else:
            imap.starttls(ssl_context=client_tls())
            sock = imap.sock
            peer = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
            out.append(cert_finding("imap.starttls", where, peer, expected_leaf(paths), paths))
        with contextlib.suppress(OSError, imaplib.IMAP4.error):
            imap.logout()
    except (OSError, imaplib.IMAP4.error, ssl.SSLError) as exc:
        got = {f.id for f in out}
        out += [
            failed(i, f"{where}: the session broke: {exc}", "read serve's log")
            for i in ("imap.banner", "imap.starttls")
            if i not in got
        ]
    finally:
        with contextlib.suppress(OSError):
            imap.shutdown()
    return out


def _imaps_one(paths: StatePaths, where: str, host: str, port: int, timeout_s: float) -> Finding:
    try:
        imap = imaplib.IMAP4_SSL(host, port, ssl_context=client_tls(), timeout=timeout_s)
    except (OSError, imaplib.IMAP4.error) as exc:
        return _down("imap.tls", "imaps", where, exc)
    try:
        sock = imap.sock
        peer = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        if not imap.welcome.startswith(b"* OK"):
            return failed(
                "imap.tls",
                f"{where}: greeting {imap.welcome!r} is not * OK",
                "restart serve and read its log",
            )
        with contextlib.suppress(OSError, imaplib.IMAP4.error):
            imap.logout()
    finally:
        with contextlib.suppress(OSError):
            imap.shutdown()
    return cert_finding("imap.tls", where, peer, expected_leaf(paths), paths)
