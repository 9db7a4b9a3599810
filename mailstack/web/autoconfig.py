"""Client autoconfiguration for every hosted domain: Thunderbird, Outlook, Apple.

- Thunderbird autoconfig (clientConfig 1.1) at `autoconfig.<domain>/mail/config-v1.1.xml`
  and `<domain>/.well-known/autoconfig/mail/config-v1.1.xml`, the first two places Thunderbird
  looks (its ISPDB comes third and is not ours). The domain is the `emailaddress` parameter's,
  else the Host name without `autoconfig.`.
- Outlook POX autodiscover ([MS-OXDSCLI]) at `/autodiscover/autodiscover.xml`: POST with the
  request XML (parsed with defusedxml: the body comes from anyone), or GET with `?email=`.
- Apple configuration profile (`com.apple.mail.managed` payload) at `/mobileconfig?email=`:
  settings and the user name only, never a password (the device asks for it). Logged-in users
  also find it on their account page (`/account/mobileconfig`, mailstack/web/pages.py).

Every answer carries only what DNS already tells (host name, ports), so it is the same whether
an account exists or not: nothing here reveals who has a mailbox. An address or domain that is
not hosted here gets 404.
"""

from __future__ import annotations

import plistlib
import re
import uuid
from dataclasses import dataclass

import defusedxml.ElementTree as SafeET
from aiohttp import web

from mailstack.base.config import Config
from mailstack.render import render
from mailstack.web.deps import DEPS, WebDeps

MAX_REQUEST_BYTES = 16384  # an autodiscover request is a few hundred bytes
# A practical address check (RFC 5321 §4.1.2's dot-atom local part); the domain is compared
# with the hosted domains, so only its form matters here.
_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9.-]{1,253}")
_REQUEST_NS = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    kind: str  # "IMAP" or "SMTP"
    port: int
    socket_type: str  # "SSL" (implicit TLS, RFC 8314) or "STARTTLS"


def endpoints(config: Config) -> tuple[list[Endpoint], list[Endpoint]]:
    """(incoming, outgoing), implicit TLS first (RFC 8314 §3: preferred over STARTTLS)."""

    def first(service: str) -> int | None:
        listeners = config.listeners(service)
        return listeners[0][1] if listeners else None

    incoming = [
        Endpoint("IMAP", port, kind)
        for port, kind in ((first("imaps"), "SSL"), (first("imap"), "STARTTLS"))
        if port is not None
    ]
    outgoing = [
        Endpoint("SMTP", port, kind)
        for port, kind in ((first("submissions"), "SSL"), (first("submission"), "STARTTLS"))
        if port is not None
    ]
    return incoming, outgoing


def hosted_address(deps: WebDeps, value: str) -> str | None:
    """`value` lower-cased if it is an address in a hosted domain, else None."""
    value = value.strip()
    if not _ADDRESS.fullmatch(value):
        return None
    local, _, domain = value.rpartition("@")
    domain = domain.lower().rstrip(".")
    return f"{local}@{domain}" if domain in deps.hosted_domains() else None


def thunderbird_xml(config: Config, domain: str) -> str:
    incoming, outgoing = endpoints(config)
    return render(
        "web/autoconfig.xml.j2",
        domain=domain,
        hostname=config.server.hostname,
        incoming=incoming,
        outgoing=outgoing,
    )


def autodiscover_xml(config: Config, email: str | None) -> str:
    incoming, outgoing = endpoints(config)
    # Outlook takes the first protocol of each type: the preferred endpoint of each.
    protocols = incoming[:1] + outgoing[:1]
    return render(
        "web/autodiscover.xml.j2", hostname=config.server.hostname, email=email, protocols=protocols
    )


def mobileconfig(config: Config, email: str) -> bytes:
    """An unsigned configuration profile; UUIDs derive from the address, so downloading it
    again replaces the installed profile instead of adding a second account."""
    incoming, outgoing = endpoints(config)
    host = config.server.hostname
    ident = ".".join(reversed(host.split(".")))
    account: dict[str, object] = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{ident}.mail.{email}",
        "PayloadUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, f"mailto:{email}#account")).upper(),
        "PayloadDisplayName": email,
        "EmailAccountDescription": email,
        "EmailAccountType": "EmailTypeIMAP",
        "EmailAddress": email,
        "IncomingMailServerHostName": host,
        "IncomingMailServerUsername": email,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": host,
        "OutgoingMailServerUsername": email,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingPasswordSameAsIncomingPassword": True,
    }
    if incoming:
        account |= {
            "IncomingMailServerPortNumber": incoming[0].port,
            "IncomingMailServerUseSSL": incoming[0].socket_type == "SSL",
        }
    if outgoing:
        account |= {
            "OutgoingMailServerPortNumber": outgoing[0].port,
            # Apple's "UseSSL" means TLS at all: STARTTLS on 587 is negotiated when offered.
            "OutgoingMailServerUseSSL": True,
        }
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{ident}.profile.{email}",
        "PayloadUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, f"mailto:{email}#profile")).upper(),
        "PayloadDisplayName": f"Mail: {email}",
        "PayloadDescription": f"Mail settings for {email} on {host} (no password included)",
        "PayloadRemovalDisallowed": False,
        "PayloadContent": [account],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML)


def _domain_of_request(request: web.Request, deps: WebDeps) -> str | None:
    if email := request.query.get("emailaddress"):
        address = hosted_address(deps, email)
        return address.rpartition("@")[2] if address else None
    host = (request.url.raw_host or "").lower().rstrip(".")
    if host == deps.config.server.hostname:  # asked by the server's own name: the first domain
        return deps.config.server.domains[0]
    host = host.removeprefix("autoconfig.")
    return host if host in deps.hosted_domains() else None


async def thunderbird(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    domain = _domain_of_request(request, deps)
    if domain is None:
        raise web.HTTPNotFound(text="no mail domain of this server\n")
    return web.Response(
        text=thunderbird_xml(deps.config, domain), content_type="application/xml", charset="utf-8"
    )


async def autodiscover(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    if request.method == "POST":
        body = await request.content.read(MAX_REQUEST_BYTES + 1)
        if len(body) > MAX_REQUEST_BYTES:
            raise web.HTTPRequestEntityTooLarge(MAX_REQUEST_BYTES, len(body))
        try:
            root = SafeET.fromstring(body)
        except Exception:  # ParseError and defusedxml's refusals (entities, DTDs) alike
            raise web.HTTPBadRequest(text="not an autodiscover request\n") from None
        found = root.find(f"{_REQUEST_NS}Request/{_REQUEST_NS}EMailAddress")
        given = (found.text or "") if found is not None else ""
    else:
        given = request.query.get("email", "")
    email = hosted_address(deps, given)
    if email is None:
        raise web.HTTPNotFound(text="no mail domain of this server\n")
    return web.Response(
        text=autodiscover_xml(deps.config, email), content_type="application/xml", charset="utf-8"
    )


async def apple_profile(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    email = hosted_address(deps, request.query.get("email", ""))
    if email is None:
        raise web.HTTPNotFound(text="give ?email= with an address of this server\n")
    return profile_response(deps.config, email)


def profile_response(config: Config, email: str) -> web.Response:
    """The profile of `email` as a download (the browser saves it; iOS offers to install it)."""
    filename = re.sub(r"[^A-Za-z0-9@._-]", "_", email) + ".mobileconfig"
    return web.Response(
        body=mobileconfig(config, email),
        content_type="application/x-apple-aspen-config",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/mail/config-v1.1.xml", thunderbird)
    app.router.add_get("/.well-known/autoconfig/mail/config-v1.1.xml", thunderbird)
    for path in ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"):
        app.router.add_route("POST", path, autodiscover)
        app.router.add_get(path, autodiscover)
    app.router.add_get("/mobileconfig", apple_profile)
