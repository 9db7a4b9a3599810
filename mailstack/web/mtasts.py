"""Our MTA-STS policy (RFC 8461), served at https://mta-sts.<domain>/.well-known/mta-sts.txt.

One policy for every hosted domain: `[web] mta_sts_mode`, our hostname as the only `mx`, and
`[web] mta_sts_max_age` (`mailstack.init.mta_sts_policy`). The `_mta-sts.<domain>` TXT record
that `init`/`dns` print carries an id derived from this text (dnsrecords.MtaStsPolicy), so any
change to the policy changes the id senders compare. Only the `mta-sts.` name of a hosted
domain gets it (§3.3); senders do not follow redirects, so there are none.
"""

from __future__ import annotations

from aiohttp import web

from mailstack.init import mta_sts_policy
from mailstack.web.deps import DEPS

POLICY_PATH = "/.well-known/mta-sts.txt"  # RFC 8461 §3.3


async def policy(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    host = (request.url.raw_host or "").lower().rstrip(".")
    if (
        not host.startswith("mta-sts.")
        or host.removeprefix("mta-sts.") not in deps.hosted_domains()
    ):
        raise web.HTTPNotFound(text="no MTA-STS policy for this name\n")
    # RFC 8461 §3.2: media type "text/plain"; the body is ASCII.
    return web.Response(text=mta_sts_policy(deps.config).text(), content_type="text/plain")


def add_routes(app: web.Application) -> None:
    app.router.add_get(POLICY_PATH, policy)
