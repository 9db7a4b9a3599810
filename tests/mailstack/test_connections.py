"""mailstack.base.connections: the connection limiter every listener shares (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailstack.base.connections import ConnectionLimiter, Refusal, Ticket, network_of, plain_ip


def admitted(result: Ticket | Refusal) -> Ticket:
    assert isinstance(result, Ticket), result
    return result


def test_reserve_is_kept_from_connections_not_logged_in() -> None:
    limiter = ConnectionLimiter(max_total=4, max_per_ip=10, reserved_for_authenticated=2)
    first, second = admitted(limiter.admit("192.0.2.1")), admitted(limiter.admit("192.0.2.2"))
    assert limiter.admit("198.51.100.1") is Refusal.TOTAL  # two pre-auth: the rest is reserved
    limiter.authenticated(first)  # logging in frees a pre-auth place...
    third = admitted(limiter.admit("198.51.100.1"))
    limiter.authenticated(second)
    limiter.authenticated(third)
    fourth = admitted(limiter.admit("198.51.100.2"))
    assert limiter.total == 4
    assert limiter.admit("198.51.100.3") is Refusal.TOTAL  # ...up to the global cap
    for ticket in (first, second, third, fourth, fourth):  # a second release is a no-op
        limiter.release(ticket)
    assert limiter.total == 0 and limiter.preauth == 0


def test_addresses_and_networks() -> None:
    assert plain_ip("::ffff:192.0.2.1") == "192.0.2.1"
    assert plain_ip("fe80::1%eth0") == "fe80::1"
    assert plain_ip("unknown") == "unknown"
    assert network_of("::ffff:192.0.2.77") == "192.0.2.0/24"
    assert network_of("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["admit", "login", "release"]),
            st.sampled_from(["192.0.2.1", "::ffff:192.0.2.1", "192.0.2.9", "2001:db8::1", "x"]),
        ),
        max_size=60,
    )
)
def test_counts_never_go_negative_or_over_the_limits(steps: list[tuple[str, str]]) -> None:
    limiter = ConnectionLimiter(
        max_total=6, max_per_ip=3, max_per_network=4, reserved_for_authenticated=2
    )
    open_: list[Ticket] = []
    for action, ip in steps:
        if action == "admit":
            result = limiter.admit(ip)
            if isinstance(result, Ticket):
                open_.append(result)
        elif open_:
            ticket = open_.pop(0) if action == "release" else open_[0]
            (limiter.release if action == "release" else limiter.authenticated)(ticket)
        assert 0 <= limiter.preauth <= 4 and 0 <= limiter.total <= 6
    for ticket in open_:
        limiter.release(ticket)
    assert limiter.total == 0
