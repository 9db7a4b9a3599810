"""Pure MX ordering (RFC 5321 §5.1): which hosts to try for a domain, in which order.

    MX records -> hosts by ascending preference; equal preferences shuffled
    no MX records -> the domain itself (the implicit MX, RFC 5321 §5.1)
    a single MX "0 ." -> the domain accepts no mail (null MX, RFC 7505)

No I/O: the resolver lives in `delivery.remote`; randomness comes from the caller's
`random.Random` so tests can pin it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MxRecord:
    preference: int
    exchange: str  # host name without the trailing dot; "" is the root (null MX)


class NullMxError(Exception):
    """The domain publishes a null MX: it accepts no mail (RFC 7505 §3)."""


def order_hosts(
    domain: str, records: Iterable[MxRecord], rng: random.Random | None = None
) -> list[str]:
    """Hosts to try, best first. Raises NullMxError for a null MX.

    RFC 5321 §5.1: "the SMTP client SHOULD try ... in order of preference, lowest number first";
    among equal preferences "the sender-SMTP MUST randomize them to spread the load".
    A host named twice is tried once (at its best preference).
    """
    rng = rng or random.Random()  # noqa: S311 - load spreading, not security
    recs = list(records)
    if not recs:
        return [domain.rstrip(".").lower()]  # RFC 5321 §5.1: implicit MX
    # RFC 7505 §3: a null MX is the only MX record, preference 0, exchange ".". A root exchange
    # among other records is malformed; we skip it and try the rest (§4.3 asks senders not to
    # deliver to "."), which is also what Postfix does.
    if len(recs) == 1 and recs[0].exchange.strip(".") == "":
        raise NullMxError(domain)
    by_pref: dict[int, list[str]] = {}
    for rec in recs:
        host = rec.exchange.rstrip(".").lower()
        if host:
            by_pref.setdefault(rec.preference, []).append(host)
    if not by_pref:
        raise NullMxError(domain)
    hosts: list[str] = []
    for pref in sorted(by_pref):
        group = sorted(set(by_pref[pref]))  # sort first so a seeded rng is reproducible
        rng.shuffle(group)
        hosts.extend(h for h in group if h not in hosts)
    return hosts
