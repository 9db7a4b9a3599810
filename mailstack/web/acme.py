"""Certificates from an ACME CA (RFC 8555) with HTTP-01 or TLS-ALPN-01, through the `acme` library.

`mailstack tls acme --email ADDR` registers an account (key and settings kept in
acme/account.json, mode 0600) and obtains one certificate for the hostname plus each hosted
domain's autoconfig, autodiscover and mta-sts names. HTTP-01 (RFC 8555 §8.3): each key
authorization is written to acme/challenges/<token>, which the `listen.http` listener serves.
TLS-ALPN-01 (RFC 8737): a challenge certificate per name goes to acme/tls-alpn/, which the
`listen.https` listener presents to "acme-tls/1" handshakes (mailstack.web.alpn). The choice:
`--challenge`, kept in the account for renewals; without it http-01 when listen.http is set, else
tls-alpn-01. When no `serve` runs, the command binds the listener's addresses itself for the
duration. The new key and chain replace tls/privkey.pem (0600) and tls/fullchain.pem only after
they were checked to match and to name the hostname; a running serve is told to reload (SIGHUP).

`serve` renews (`renew_forever`): every `[web] acme_check_interval_s` it looks at the
certificate, and under `[web] acme_renew_days` left it orders a new one; on failure it keeps
the current certificate, logs why, and records the attempt in acme/state.json, which `status`
and `check` (web.acme) show.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import signal
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from acme import challenges, client, crypto_util, errors, messages
from acme.challenges import KeyAuthorizationChallenge
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy.jwk import JWKRSA

from mailstack import __version__
from mailstack.base.config import Config
from mailstack.base.errors import ConfigError, HostError, MailstackError
from mailstack.base.fsutil import atomic_write, ensure_dir
from mailstack.base.paths import StatePaths
from mailstack.base.tls import load_server_tls
from mailstack.keys import validate_tls_pair, write_private, write_public
from mailstack.web.alpn import AlpnResponder, challenge_dir, pending_challenges

log = logging.getLogger(__name__)

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
ORDER_TIMEOUT_S = 90.0  # validation and finalization together; the CA usually needs seconds
NETWORK_TIMEOUT_S = 30  # each request to the CA
HTTP_01, TLS_ALPN_01 = "http-01", "tls-alpn-01"
CHALLENGES = (HTTP_01, TLS_ALPN_01)
# Which listener the CA's validation reaches for each challenge type.
SERVICE = {HTTP_01: "http", TLS_ALPN_01: "https"}


# acme 5 parses only the challenge types it still supports; RFC 8737's is registered here so that
# authorizations carry it as a KeyAuthorizationChallenge (the library builds the key authorization
# and posts the response; the certificate is mailstack.web.alpn's).
if TLS_ALPN_01 not in challenges.Challenge.TYPES:

    @challenges.ChallengeResponse.register
    class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
        typ = TLS_ALPN_01

    @challenges.Challenge.register
    class TLSALPN01(challenges.KeyAuthorizationChallenge):
        response_cls = TLSALPN01Response
        typ = TLS_ALPN_01

        def validation(self, account_key: Any, **_kwargs: Any) -> str:
            return self.key_authorization(account_key)


class AcmeError(MailstackError):
    """The CA refused or could not be reached; the current certificate stays in use."""


@dataclass(frozen=True, slots=True)
class AcmeAccount:
    directory: str
    email: str
    ca_bundle: str  # a CA bundle to trust for the directory (a test CA); "" = the system's
    key_pem: str  # the account key (RSA, RS256: what every ACME CA accepts)
    uri: str = ""  # the account URL once registered
    challenge: str = ""  # http-01 or tls-alpn-01 as chosen with --challenge; "" = by the config

    @classmethod
    def load(cls, paths: StatePaths) -> AcmeAccount | None:
        try:
            data = json.loads(paths.acme_account.read_text(encoding="utf-8"))
            return cls(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            raise HostError(f"cannot read {paths.acme_account}: {exc}") from None

    @classmethod
    def create(cls, directory: str, email: str, ca_bundle: str) -> AcmeAccount:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")
        return cls(directory, email, ca_bundle, pem)

    def save(self, paths: StatePaths) -> None:
        ensure_dir(paths.acme_dir, mode=0o700)
        write_private(paths.acme_account, json.dumps(asdict(self), indent=1).encode())


def choose_challenge(cfg: Config, chosen: str = "") -> str:
    """`chosen` if given, else HTTP-01 where listen.http is set and TLS-ALPN-01 otherwise;
    ConfigError if the listener the CA must reach is not configured."""
    challenge = chosen or (HTTP_01 if cfg.listeners("http") else TLS_ALPN_01)
    if challenge not in CHALLENGES:
        raise ConfigError(f"unknown ACME challenge {challenge!r}", hint="http-01 or tls-alpn-01")
    service = SERVICE[challenge]
    if not cfg.listeners(service):
        where = "http://<name>/.well-known/acme-challenge/" if service == "http" else "<name>:443"
        raise ConfigError(
            f"{challenge} needs listen.{service} (the CA connects to {where})",
            hint=f'set listen.{service} = ["0.0.0.0:{80 if service == "http" else 443}"] '
            "in mailstack.toml",
        )
    return challenge


def certificate_names(cfg: Config, domains: list[str]) -> list[str]:
    """The hostname first (the subject clients check), then the web names of each domain."""
    names = [cfg.server.hostname]
    for domain in domains:
        names += [f"{sub}.{domain}" for sub in ("autoconfig", "autodiscover", "mta-sts")]
    return list(dict.fromkeys(n.lower() for n in names))


@contextlib.contextmanager
def _challenge_files(paths: StatePaths) -> Iterator[dict[str, str]]:
    """token -> key authorization, written as files while the order runs, removed after."""
    ensure_dir(paths.acme_challenges, mode=0o755)
    written: dict[str, str] = {}
    try:
        yield written
    finally:
        for token in written:
            (paths.acme_challenges / token).unlink(missing_ok=True)


@contextlib.contextmanager
def _responder(paths: StatePaths, challenge: str) -> Iterator[Callable[[str, str, str], None]]:
    """publish(name, token, key authorization) for the chosen challenge, undone on the way out."""
    if challenge == TLS_ALPN_01:
        with pending_challenges(challenge_dir(paths)) as publish_cert:
            yield lambda name, _token, authorization: publish_cert(name, authorization)
        return
    with _challenge_files(paths) as written:

        def publish_file(_name: str, token: str, authorization: str) -> None:
            path = paths.acme_challenges / token
            atomic_write(path, authorization.encode("ascii"), mode=0o644)
            written[token] = authorization

        yield publish_file


def obtain(
    paths: StatePaths, cfg: Config, domains: list[str], account: AcmeAccount, challenge: str
) -> float:
    """Order, validate (`challenge`), install; returns the new certificate's expiry (epoch s).
    Blocking (the `acme` library uses requests): serve runs it in a thread."""
    names = certificate_names(cfg, domains)
    try:
        return _obtain(paths, cfg, names, account, challenge)
    except MailstackError:
        raise
    except errors.ValidationError as exc:
        problems = [
            f"{authz.body.identifier.value}: {ch.error.detail or ch.error.typ}"
            for authz in exc.failed_authzrs
            for ch in authz.body.challenges
            if ch.error is not None
        ]
        raise AcmeError(
            "the CA could not validate " + "; ".join(problems or ["the names"]),
            hint="each name must resolve to this server, and "
            + (
                "listen.http must be reachable on port 80 from the CA"
                if challenge == HTTP_01
                else "listen.https must be reachable on port 443 from the CA"
            ),
        ) from None
    except messages.Error as exc:
        raise AcmeError(f"the CA refused: {exc.detail or exc.typ}") from None
    except (errors.Error, OSError) as exc:  # requests' errors are OSErrors
        raise AcmeError(f"ACME with {account.directory} failed: {exc}") from None


def _obtain(
    paths: StatePaths, cfg: Config, names: list[str], account: AcmeAccount, challenge: str
) -> float:
    key = serialization.load_pem_private_key(account.key_pem.encode("ascii"), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise HostError(f"{paths.acme_account}: the account key is not an RSA key")
    # requests takes a CA bundle path where acme's signature says bool.
    verify: Any = account.ca_bundle or True
    net = client.ClientNetwork(
        JWKRSA(key=key),
        user_agent=f"mailstack/{__version__}",
        verify_ssl=verify,
        timeout=NETWORK_TIMEOUT_S,
    )
    acme = client.ClientV2(client.ClientV2.get_directory(account.directory, net), net)
    if account.uri:
        net.account = messages.RegistrationResource(uri=account.uri, body=messages.Registration())
    else:
        new = messages.NewRegistration.from_data(email=account.email, terms_of_service_agreed=True)
        try:
            uri = acme.new_account(new).uri
        except errors.ConflictError as exc:  # this key has an account already
            uri = exc.location
            net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())
        AcmeAccount(**{**asdict(account), "uri": uri}).save(paths)
    cert_key = ec.generate_private_key(ec.SECP256R1())
    key_pem = cert_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    order = acme.new_order(crypto_util.make_csr(key_pem, names))
    deadline = dt.datetime.now() + dt.timedelta(seconds=ORDER_TIMEOUT_S)
    with _responder(paths, challenge) as publish:
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue  # validated recently (the CA reuses authorizations)
            name = authz.body.identifier.value
            offered = next((c for c in authz.body.challenges if c.chall.typ == challenge), None)
            if offered is None or not isinstance(offered.chall, KeyAuthorizationChallenge):
                raise AcmeError(f"the CA offers no {challenge} for {name}")
            # The key authorization (RFC 8555 §8.1) is what both challenges publish.
            authorization = offered.chall.key_authorization(net.key)
            response = offered.chall.response(net.key)
            publish(name, offered.chall.encode("token"), authorization)
            acme.answer_challenge(offered, response)  # the CA validates from now on
        order = acme.poll_and_finalize(order, deadline)
    chain = order.fullchain_pem.encode("ascii")
    info = validate_tls_pair(chain, key_pem, cfg.server.hostname)
    # Key first: serve reloads only when told, after both files are in place.
    write_private(paths.tls_key, key_pem)
    write_public(paths.tls_cert, chain)
    for stale in (paths.ca_cert, paths.ca_key):  # the private CA no longer vouches for us
        stale.unlink(missing_ok=True)
    return info.not_after.timestamp()


# -- the record status and check read ------------------------------------------------------------


def write_state(paths: StatePaths, *, ok: bool, message: str, expires: float | None) -> None:
    record = {"time": time.time(), "ok": ok, "message": message, "expires": expires}
    with contextlib.suppress(OSError):  # best effort: the log says it too
        ensure_dir(paths.acme_dir, mode=0o700)
        atomic_write(paths.acme_state, json.dumps(record) + "\n", mode=0o640)


def read_state(paths: StatePaths) -> dict[str, Any] | None:
    try:
        data = json.loads(paths.acme_state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def days_left(paths: StatePaths, now: float | None = None) -> float | None:
    try:
        cert = x509.load_pem_x509_certificate(paths.tls_cert.read_bytes())
    except (OSError, ValueError):
        return None
    return (cert.not_valid_after_utc.timestamp() - (now or time.time())) / 86400


# -- inside serve ----------------------------------------------------------------------------


async def renew_forever(
    paths: StatePaths,
    cfg: Config,
    domains: Callable[[], list[str]],
    stopping: asyncio.Event,
    reload: Callable[[], None],
) -> None:
    """Renew under `acme_renew_days` left, look again every `acme_check_interval_s`; only once
    an account exists (`mailstack tls acme`), which may happen while serve runs."""
    while not stopping.is_set():
        account = None
        try:
            account = AcmeAccount.load(paths)
        except MailstackError as exc:
            log.error("ACME: %s", exc)
        left = days_left(paths)
        if account is not None and (left is None or left < cfg.web.acme_renew_days):
            await _renew_once(paths, cfg, domains(), account, left, reload)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), cfg.web.acme_check_interval_s)


async def _renew_once(
    paths: StatePaths,
    cfg: Config,
    domains: list[str],
    account: AcmeAccount,
    left: float | None,
    reload: Callable[[], None],
) -> None:
    log.info("ACME: renewing the certificate (%s days left)", f"{left:.0f}" if left else "no")
    try:
        challenge = choose_challenge(cfg, account.challenge)  # the config may have changed
        expires = await asyncio.to_thread(obtain, paths, cfg, domains, account, challenge)
    except MailstackError as exc:
        message = f"renewal failed, keeping the current certificate: {exc.message}"
        log.error("ACME: %s", message)
        write_state(paths, ok=False, message=message, expires=None)
        return
    when = dt.datetime.fromtimestamp(expires, dt.UTC)
    write_state(paths, ok=True, message=f"renewed, expires {when:%Y-%m-%d}", expires=expires)
    log.info("ACME: certificate renewed, expires %s; reloading", f"{when:%Y-%m-%d}")
    reload()


def reload_by_signal() -> None:
    """The one reload path of serve (its SIGHUP handler reloads listeners and SMTP workers)."""
    if signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, signal.SIG_IGN, None):
        # Not yet installed (serve still starting): the default action would end the process.
        log.warning("ACME: serve is not ready for SIGHUP; the new certificate loads on the next")
        return
    os.kill(os.getpid(), signal.SIGHUP)


# -- `mailstack tls acme` ------------------------------------------------------------------------


def challenge_app(paths: StatePaths) -> web.Application:
    """What the command serves when no serve does: the HTTP-01 files on http; on https, where
    TLS-ALPN-01 needs only the handshake, nothing else (404)."""
    from mailstack.web.app import CHALLENGES, acme_challenge

    app = web.Application()
    app[CHALLENGES] = paths.acme_challenges
    app.router.add_get("/.well-known/acme-challenge/{token}", acme_challenge)
    return app


def _challenge_tls(paths: StatePaths) -> ssl.SSLContext:
    """The standalone https listener's TLS: challenge certificates for pending names, the
    current certificate (if usable) for the rest."""
    try:
        outer = load_server_tls(paths.tls_cert, paths.tls_key)
    except HostError:  # no certificate yet: only the challenge handshakes succeed
        outer = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    return AlpnResponder(challenge_dir(paths)).wrap(outer)


async def issue(
    paths: StatePaths,
    cfg: Config,
    domains: list[str],
    account: AcmeAccount,
    challenge: str,
    *,
    own_listener: bool,
) -> float:
    """Obtain and install a certificate; with `own_listener`, answer the challenges meanwhile on
    the listener `challenge` needs (listen.http or listen.https)."""
    service = SERVICE[challenge]
    runner = web.AppRunner(challenge_app(paths), access_log=None) if own_listener else None
    try:
        if runner is not None:
            await runner.setup()
            tls = _challenge_tls(paths) if service == "https" else None
            for host, port in cfg.listeners(service):
                try:
                    await web.TCPSite(runner, host, port, ssl_context=tls).start()
                except OSError as exc:
                    raise HostError(
                        f"cannot listen on listen.{service} {host}:{port} for the challenges: "
                        f"{exc.strerror or exc}",
                        hint=f"run it as root (port {80 if service == 'http' else 443}), "
                        "or while `mailstack serve` runs",
                    ) from None
        return await asyncio.to_thread(obtain, paths, cfg, domains, account, challenge)
    finally:
        if runner is not None:
            await runner.cleanup()


def running_serve(paths: StatePaths) -> tuple[int | None, set[str]]:
    """The pid of a running serve (or None) and the services it listens for."""
    try:
        record = json.loads(paths.serve_status.read_text(encoding="utf-8"))
        pid = int(record["pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None, set()
    return pid, {str(item.get("service")) for item in record.get("listeners") or []}


@dataclass(frozen=True, slots=True)
class Issued:
    names: list[str]
    expires: float
    reloaded_pid: int | None  # the serve told to reload (SIGHUP), if one runs


def acme_command(
    paths: StatePaths,
    cfg: Config,
    domains: list[str],
    *,
    email: str,
    directory: str,
    ca_bundle: str,
    challenge: str = "",
) -> Issued:
    """`mailstack tls acme`: set up (or update) the account, obtain and install a certificate,
    tell a running serve to reload. The attempt is recorded for status/check either way.
    `challenge` ("" = by the config, see `choose_challenge`) is kept for serve's renewals."""
    existing = AcmeAccount.load(paths)
    if existing is not None and existing.directory == directory:
        account = AcmeAccount(directory, email, ca_bundle, existing.key_pem, existing.uri)
    else:  # a new CA: a new account
        account = AcmeAccount.create(directory, email, ca_bundle)
    account = AcmeAccount(**{**asdict(account), "challenge": challenge})
    account.save(paths)
    try:
        chosen = choose_challenge(cfg, challenge)
        pid, services = running_serve(paths)
        own = SERVICE[chosen] not in services  # else serve's listener answers the CA
        expires = asyncio.run(issue(paths, cfg, domains, account, chosen, own_listener=own))
    except MailstackError as exc:
        write_state(paths, ok=False, message=f"issuance failed: {exc.message}", expires=None)
        raise
    when = dt.datetime.fromtimestamp(expires, dt.UTC)
    write_state(paths, ok=True, message=f"issued, expires {when:%Y-%m-%d}", expires=expires)
    if pid is not None:
        os.kill(pid, signal.SIGHUP)
    return Issued(certificate_names(cfg, domains), expires, pid)
