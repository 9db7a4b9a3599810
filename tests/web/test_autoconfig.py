"""Client autoconfiguration from a real `serve`: the XML Thunderbird and Outlook parse,
schema-checked; Thunderbird's lookup order; the Apple profile; the settings really log in."""

from __future__ import annotations

import imaplib
import plistlib
import smtplib
import ssl
from pathlib import Path
from urllib.parse import quote

import pytest
from lxml import etree

from mailstack.base.config import load_config
from tests.conftest import Cli
from tests.support.serve import ServeProcess
from tests.web.conftest import Reply, https_request

SCHEMAS = Path(__file__).parent / "schemas"
TB = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"
REQUEST = """<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
  <Request>
    <EMailAddress>{email}</EMailAddress>
    <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>
  </Request>
</Autodiscover>"""


def validated(reply: Reply, schema: str) -> etree._Element:
    assert reply.status == 200, reply.text
    assert reply.headers["Content-Type"].startswith("application/xml")
    doc = etree.fromstring(reply.body)
    xsd = etree.XMLSchema(etree.parse(str(SCHEMAS / schema)))
    assert xsd.validate(doc), xsd.error_log
    return doc


def ports_of(root: Path) -> dict[str, int]:
    cfg = load_config(root / "mailstack.toml")
    return {s: cfg.listeners(s)[0][1] for s in ("imap", "imaps", "submission", "submissions")}


def thunderbird_lookup(
    email: str, names: dict[str, int], ca: Path
) -> tuple[str, etree._Element] | None:
    """Thunderbird's order (its accountSetup guessConfig): autoconfig.<domain> with the
    address, then <domain>/.well-known; the ISPDB (third) is not ours. `names` plays DNS:
    host name -> our https port; a name missing from it does not resolve."""
    domain = email.rpartition("@")[2]
    for host, path in (
        (f"autoconfig.{domain}", f"/mail/config-v1.1.xml?emailaddress={quote(email)}"),
        (domain, "/.well-known/autoconfig/mail/config-v1.1.xml"),
    ):
        if host not in names:
            continue
        try:
            reply = https_request(names[host], path, host=host, ca=ca)
        except OSError:
            continue
        if reply.status == 200:
            return f"https://{host}{path}", validated(reply, "clientconfig.xsd")
    return None


def test_thunderbird_finds_the_settings_in_its_lookup_order(
    web_serve: ServeProcess, web_dir: Path
) -> None:
    ca, port, ports = web_dir / "tls/ca.pem", web_serve.port("https"), ports_of(web_dir)
    both = {"autoconfig.example.com": port, "example.com": port}
    found = thunderbird_lookup("ann@example.com", both, ca)
    assert found is not None
    url, doc = found
    assert url.startswith("https://autoconfig.example.com/mail/config-v1.1.xml?emailaddress=")
    provider = doc.find("emailProvider")
    assert provider is not None and provider.get("id") == "example.com"
    assert provider.findtext("domain") == "example.com"
    incoming = [(s.findtext("port"), s.findtext("socketType")) for s in doc.iter("incomingServer")]
    outgoing = [(s.findtext("port"), s.findtext("socketType")) for s in doc.iter("outgoingServer")]
    assert incoming == [(str(ports["imaps"]), "SSL"), (str(ports["imap"]), "STARTTLS")]
    assert outgoing == [(str(ports["submissions"]), "SSL"), (str(ports["submission"]), "STARTTLS")]
    assert {s.findtext("hostname") for s in doc.iter("incomingServer", "outgoingServer")} == {
        "mail.example.com"
    }
    # No autoconfig.<domain> in DNS: the .well-known URL on the domain answers the same.
    found = thunderbird_lookup("ann@example.com", {"example.com": port}, ca)
    assert found is not None
    assert found[0] == "https://example.com/.well-known/autoconfig/mail/config-v1.1.xml"
    assert etree.tostring(found[1]) == etree.tostring(doc)
    # A domain this server does not host: nothing (Thunderbird moves on to the ISPDB).
    assert thunderbird_lookup("ann@example.org", {"autoconfig.example.org": port}, ca) is None


def test_outlook_autodiscover_post_and_get(web_serve: ServeProcess, web_dir: Path) -> None:
    ca, port, ports = web_dir / "tls/ca.pem", web_serve.port("https"), ports_of(web_dir)
    body = REQUEST.format(email="Ann@Example.COM").encode()
    for path in ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"):
        reply = https_request(
            port,
            path,
            host="autodiscover.example.com",
            ca=ca,
            method="POST",
            body=body,
            headers={"Content-Type": "text/xml"},
        )
        doc = validated(reply, "autodiscover.xsd")
        protocols = {
            p.findtext(f"{TB}Type"): (p.findtext(f"{TB}Port"), p.findtext(f"{TB}SSL"))
            for p in doc.iter(f"{TB}Protocol")
        }
        assert protocols == {
            "IMAP": (str(ports["imaps"]), "on"),
            "SMTP": (str(ports["submissions"]), "on"),
        }
        assert {p.text for p in doc.iter(f"{TB}LoginName")} == {"Ann@example.com"}
    reply = https_request(port, "/autodiscover/autodiscover.xml?email=bob@example.com", ca=ca)
    validated(reply, "autodiscover.xsd")


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param(REQUEST.format(email="ann@example.org"), 404, id="not-hosted"),
        pytest.param(REQUEST.format(email="not an address"), 404, id="not-an-address"),
        pytest.param("<Autodiscover", 400, id="not-xml"),
        pytest.param(
            '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "ann@example.com">]><a>&x;</a>',
            400,
            id="entity",
        ),
        pytest.param("<a>" + "x" * 20000 + "</a>", 413, id="too-large"),
    ],
)
def test_autodiscover_refuses_bad_requests(
    web_serve: ServeProcess, web_dir: Path, body: str, status: int
) -> None:
    reply = https_request(
        web_serve.port("https"),
        "/autodiscover/autodiscover.xml",
        ca=web_dir / "tls/ca.pem",
        method="POST",
        body=body.encode(),
    )
    assert reply.status == status, reply.text


def test_apple_profile_has_the_settings_and_no_password(
    web_serve: ServeProcess, web_dir: Path
) -> None:
    ca, port, ports = web_dir / "tls/ca.pem", web_serve.port("https"), ports_of(web_dir)
    reply = https_request(port, "/mobileconfig?email=ann@example.com", ca=ca)
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/x-apple-aspen-config"
    assert 'filename="ann@example.com.mobileconfig"' in reply.headers["Content-Disposition"]
    profile = plistlib.loads(reply.body)
    assert profile["PayloadType"] == "Configuration"
    (account,) = profile["PayloadContent"]
    assert account["PayloadType"] == "com.apple.mail.managed"
    assert account["EmailAccountType"] == "EmailTypeIMAP"
    assert account["EmailAddress"] == account["IncomingMailServerUsername"] == "ann@example.com"
    assert account["IncomingMailServerHostName"] == "mail.example.com"
    assert account["IncomingMailServerPortNumber"] == ports["imaps"]
    assert account["OutgoingMailServerPortNumber"] == ports["submissions"]
    assert account["IncomingMailServerUseSSL"] is True
    assert not any("Password" in key and key != "OutgoingPasswordSameAsIncomingPassword"
                   for key in account)  # fmt: skip
    # The same address gets the same UUIDs: a second download replaces the installed profile.
    again = plistlib.loads(https_request(port, "/mobileconfig?email=ann@example.com", ca=ca).body)
    assert again["PayloadUUID"] == profile["PayloadUUID"]
    for bad in ("", "ann@example.org", "<script>@example.com"):
        assert https_request(port, f"/mobileconfig?email={quote(bad)}", ca=ca).status == 404


def test_the_advertised_settings_log_in(web_serve: ServeProcess, web_dir: Path, cli: Cli) -> None:
    """A client that followed autoconfig reaches IMAP and submission and logs in."""
    assert (
        cli("user", "add", "ann@example.com", "--password-stdin", input="s3cret-pw\n").returncode
        == 0
    )
    ca = web_dir / "tls/ca.pem"
    port = web_serve.port("https")
    reply = https_request(port, "/mail/config-v1.1.xml", host="autoconfig.example.com", ca=ca)
    doc = validated(reply, "clientconfig.xsd")
    imap, smtp = doc.find("emailProvider/incomingServer"), doc.find("emailProvider/outgoingServer")
    assert imap is not None and smtp is not None
    tls = ssl.create_default_context(cafile=str(ca))
    # mail.example.com is 127.0.0.1 here: connect by address, verify the name.
    tls.check_hostname = False
    with imaplib.IMAP4_SSL("127.0.0.1", int(imap.findtext("port") or 0), ssl_context=tls) as c:
        assert c.login("ann@example.com", "s3cret-pw")[0] == "OK"
    with smtplib.SMTP_SSL("127.0.0.1", int(smtp.findtext("port") or 0), context=tls) as s:
        assert s.login("ann@example.com", "s3cret-pw")[0] == 235
