"""Pure MX ordering (RFC 5321 §5.1): which hosts to try for a domain, in which order.

    MX records -> hosts by ascending preference; equal preferences shuffled
    no MX records -> the domain itself (the implicit MX, RFC 5321 §5.1)
    a single MX "0 ." -> the domain accepts no mail (null MX, RFC 7505)
    we are one of the MX hosts -> only the better-preference hosts (RFC 5321 §5.1)

No I/O: the resolver lives in `delivery.remote`; randomness comes from the caller's
`random.Random` so tests can pin it.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MxRecord:
    preference: int
    exchange: str  # host name without the trailing dot; "" is the root (null MX)


class NullMxError(Exception):
    """The domain publishes a null MX: it accepts no mail (RFC 7505 §3)."""


class MxLoopError(Exception):
    """We are the best MX of a domain we do not host: mail would loop back to us."""


def order_hosts(
    domain: str,
    records: Iterable[MxRecord],
    rng: random.Random | None = None,
    *,
    self_names: Collection[str] = (),
) -> list[str]:
    """Hosts to try, best first. Raises NullMxError for a null MX, MxLoopError when a name in
    `self_names` (our host name) is the best MX.

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
    ours = {n.rstrip(".").lower() for n in self_names}
    mine = [p for p, hosts in by_pref.items() if ours.intersection(hosts)]
    if mine:
        # RFC 5321 §5.1: a client that finds itself among the MX hosts "MUST discard the
        # records with equal or higher preference values"; none left is an error (a loop).
        by_pref = {p: hosts for p, hosts in by_pref.items() if p < min(mine)}
        if not by_pref:
            raise MxLoopError(domain)
    hosts: list[str] = []
    for pref in sorted(by_pref):
        group = sorted(set(by_pref[pref]))  # sort first so a seeded rng is reproducible
        rng.shuffle(group)
        hosts.extend(h for h in group if h not in hosts)
    return hosts
