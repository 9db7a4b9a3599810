"""Certificates from an ACME CA (RFC 8555) with HTTP-01 challenges, through the `acme` library.

`mailstack tls acme --email ADDR` registers an account (key and settings kept in
acme/account.json, mode 0600) and obtains one certificate for the hostname plus each hosted
domain's autoconfig, autodiscover and mta-sts names. HTTP-01 (RFC 8555 §8.3): each key
authorization is written to acme/challenges/<token>, which the `listen.http` listener serves;
when no `serve` runs, the command binds those addresses itself for the duration. The new key
and chain replace tls/privkey.pem (0600) and tls/fullchain.pem only after they were checked to
match and to name the hostname; a running serve is told to reload (SIGHUP).

`serve` renews (`renew_forever`): every `[web] acme_check_interval_s` it looks at the
certificate, and under `[web] acme_renew_days` left it orders a new one; on failure it keeps
the current certificate, logs why, and records the attempt in acme/state.json, which `status`
and `check` (web.acme) show. TLS-ALPN-01 is not offered: the `acme` library no longer carries
its helpers, and HTTP-01 needs no second certificate path in the TLS listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from acme import challenges, client, crypto_util, errors, messages
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
from mailstack.keys import validate_tls_pair, write_private, write_public

log = logging.getLogger(__name__)

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
ORDER_TIMEOUT_S = 90.0  # validation and finalization together; the CA usually needs seconds
NETWORK_TIMEOUT_S = 30  # each request to the CA


class AcmeError(MailstackError):
    """The CA refused or could not be reached; the current certificate stays in use."""


@dataclass(frozen=True, slots=True)
class AcmeAccount:
    directory: str
    email: str
    ca_bundle: str  # a CA bundle to trust for the directory (a test CA); "" = the system's
    key_pem: str  # the account key (RSA, RS256: what every ACME CA accepts)
    uri: str = ""  # the account URL once registered

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


def obtain(paths: StatePaths, cfg: Config, domains: list[str], account: AcmeAccount) -> float:
    """Order, validate (HTTP-01), install; returns the new certificate's expiry (epoch s).
    Blocking (the `acme` library uses requests): serve runs it in a thread."""
    names = certificate_names(cfg, domains)
    try:
        return _obtain(paths, cfg, names, account)
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
            hint="each name must resolve to this server, and listen.http must be reachable "
            "on port 80 from the CA",
        ) from None
    except messages.Error as exc:
        raise AcmeError(f"the CA refused: {exc.detail or exc.typ}") from None
    except (errors.Error, OSError) as exc:  # requests' errors are OSErrors
        raise AcmeError(f"ACME with {account.directory} failed: {exc}") from None


def _obtain(paths: StatePaths, cfg: Config, names: list[str], account: AcmeAccount) -> float:
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
    with _challenge_files(paths) as written:
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue  # validated recently (the CA reuses authorizations)
            challenge = next(
                (c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)), None
            )
            if challenge is None:
                raise AcmeError(f"the CA offers no HTTP-01 for {authz.body.identifier.value}")
            response, validation = challenge.response_and_validation(net.key)
            token = challenge.chall.encode("token")
            atomic_write(paths.acme_challenges / token, validation.encode("ascii"), mode=0o644)
            written[token] = validation
            acme.answer_challenge(challenge, response)
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
        expires = await asyncio.to_thread(obtain, paths, cfg, domains, account)
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
    """What the command serves on listen.http when no serve does: the challenges only."""
    from mailstack.web.app import CHALLENGES, acme_challenge

    app = web.Application()
    app[CHALLENGES] = paths.acme_challenges
    app.router.add_get("/.well-known/acme-challenge/{token}", acme_challenge)
    return app


async def issue(
    paths: StatePaths, cfg: Config, domains: list[str], account: AcmeAccount, *, own_http: bool
) -> float:
    """Obtain and install a certificate; with `own_http`, serve the challenges meanwhile."""
    if not cfg.listeners("http"):
        raise ConfigError(
            "HTTP-01 needs listen.http (the CA fetches http://<name>/.well-known/acme-challenge/)",
            hint='set listen.http = ["0.0.0.0:80"] in mailstack.toml',
        )
    runner = web.AppRunner(challenge_app(paths), access_log=None) if own_http else None
    try:
        if runner is not None:
            await runner.setup()
            for host, port in cfg.listeners("http"):
                try:
                    await web.TCPSite(runner, host, port).start()
                except OSError as exc:
                    raise HostError(
                        f"cannot listen on listen.http {host}:{port} for the challenges: "
                        f"{exc.strerror or exc}",
                        hint="run it as root (port 80), or while `mailstack serve` runs",
                    ) from None
        return await asyncio.to_thread(obtain, paths, cfg, domains, account)
    finally:
        if runner is not None:
            await runner.cleanup()


def serve_serving_http(paths: StatePaths) -> int | None:
    """The pid of a running serve with an http listener (it answers the challenges), if any."""
    try:
        record = json.loads(paths.serve_status.read_text(encoding="utf-8"))
        pid = int(record["pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    services = {item.get("service") for item in record.get("listeners") or []}
    return pid if "http" in services else None


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
) -> Issued:
    """`mailstack tls acme`: set up (or update) the account, obtain and install a certificate,
    tell a running serve to reload. The attempt is recorded for status/check either way."""
    existing = AcmeAccount.load(paths)
    if existing is not None and existing.directory == directory:
        account = AcmeAccount(directory, email, ca_bundle, existing.key_pem, existing.uri)
    else:  # a new CA: a new account
        account = AcmeAccount.create(directory, email, ca_bundle)
    account.save(paths)
    pid = serve_serving_http(paths)
    try:
        expires = asyncio.run(issue(paths, cfg, domains, account, own_http=pid is None))
    except MailstackError as exc:
        write_state(paths, ok=False, message=f"issuance failed: {exc.message}", expires=None)
        raise
    when = dt.datetime.fromtimestamp(expires, dt.UTC)
    write_state(paths, ok=True, message=f"issued, expires {when:%Y-%m-%d}", expires=expires)
    if pid is not None:
        os.kill(pid, signal.SIGHUP)
    return Issued(certificate_names(cfg, domains), expires, pid)
