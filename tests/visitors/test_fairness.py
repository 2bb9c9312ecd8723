"""Fair use (issue 14, hole 3): the client address a visitor is counted by is what the trusted proxy
saw, never what the client claims (a new `gradio_client.Client` is a new visitor, so calls in flight
are also bounded per address)."""

from __future__ import annotations

from types import SimpleNamespace

from starlette.datastructures import Headers

from lora_space.ui.caller import client_address


def request(peer: str, *forwarded: str):
    """What gradio hands a handler: the TCP peer and the X-Forwarded-For lines as received."""
    raw = [(b"x-forwarded-for", line.encode()) for line in forwarded]
    return SimpleNamespace(headers=Headers(raw=raw), client=SimpleNamespace(host=peer), session_hash="s")


# -- the client address ---------------------------------------------------------------------------


def test_the_address_is_what_the_trusted_proxy_saw_never_what_the_client_claims():
    # Behind one proxy (a Space): the proxy appends the address that connected to it; what the client wrote before is ignored.
    assert client_address(request("10.16.3.80", "203.0.113.7"), 1) == "203.0.113.7"
    assert client_address(request("10.16.3.80", "1.2.3.4, 5.6.7.8, 203.0.113.7"), 1) == "203.0.113.7"
    assert client_address(request("10.16.3.80", "1.2.3.4", "203.0.113.7"), 1) == "203.0.113.7"  # a second header line
    assert client_address(request("10.16.3.80", "1.2.3.4, 203.0.113.7, 10.1.1.1"), 2) == "203.0.113.7"  # two proxies
    # No proxy: the TCP peer, whatever the header says.
    assert client_address(request("198.51.100.9", "1.2.3.4"), 0) == "198.51.100.9"
    assert client_address(request("198.51.100.9"), 1) == "198.51.100.9"  # a Space setting, but no proxy in front
    # IPv6 counts by its /64: one subscriber's addresses are one address.
    first = client_address(request("10.0.0.1", "2001:db8:1:2::1"), 1)
    assert first == client_address(request("10.0.0.1", "2001:db8:1:2:ffff::9"), 1) == "2001:db8:1:2::/64"
    assert first != client_address(request("10.0.0.1", "2001:db8:1:3::1"), 1)

