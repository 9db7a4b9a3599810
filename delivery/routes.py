"""Per-destination routes: `[outbound] routes = {"outlook.com" = "relay.example.net:587"}`.

For hosts whose direct delivery to one provider is blocked (or throttled), mail for a routed
recipient domain goes to that relay only, never to the domain's MX: STARTTLS with a verified
certificate is required there (the relay is a named host we chose; a password must not travel
in clear), and AUTH when `[outbound] route_credentials` holds an entry for that "host:port".
A relay on port 465 is spoken to over implicit TLS (RFC 8314), any other port with STARTTLS.
Every other domain is delivered as before. The match is on the whole domain (ASCII form):
"outlook.com" does not route "eu.outlook.com".
"""

from __future__ import annotations

from dataclasses import dataclass

from mailstack.base.config import Config, format_hostport, parse_hostport, to_ascii_domain
from mailstack.base.credentials import RouteCredentials, read_route_credentials


@dataclass(frozen=True, slots=True)
class Route:
    host: str
    port: int
    credentials: RouteCredentials | None


class RouteError(Exception):
    """The route's credentials cannot be read now (the file changed since start-up)."""


def route_for(config: Config, domain: str) -> Route | None:
    """The relay for mail to `domain`, or None to deliver it as usual."""
    routes = {to_ascii_domain(d): v for d, v in config.outbound.routes.items()}
    target = routes.get(domain.rstrip(".").lower())
    if target is None:
        return None
    host, port = parse_hostport(target)
    creds = None
    if config.outbound.route_credentials:
        try:
            table = read_route_credentials(config.outbound.route_credentials)
        except ValueError as exc:
            raise RouteError(f"outbound.route_credentials: {exc}") from None
        creds = table.get(format_hostport(host, port)) or table.get(target)
    return Route(host, port, creds)
