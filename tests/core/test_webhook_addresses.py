"""Webhook address policy for IPv6 forms that carry an IPv4 address (README, "Security and
reliability"): each is judged by the address it embeds, and the tunnel forms are refused."""

import ipaddress

import pytest

from core.webhooks import _refused_ip, url_refused

REFUSED = {
    "IPv4-mapped loopback": "::ffff:127.0.0.1",
    "IPv4-compatible loopback": "::127.0.0.1",
    "IPv4-compatible public (deprecated form)": "::8.8.8.8",
    "IPv4-translated loopback": "::ffff:0:127.0.0.1",
    "NAT64 loopback": "64:ff9b::127.0.0.1",
    "NAT64 metadata (169.254.169.254)": "64:ff9b::a9fe:a9fe",
    "NAT64 private": "64:ff9b::10.0.0.1",
    "local-use NAT64 loopback (RFC 8215)": "64:ff9b:1:7f00:0:100::",
    "6to4 loopback": "2002:7f00:1::",
    "6to4 private": "2002:c0a8:101::1",
    "Teredo": "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    "loopback": "::1",
    "link-local": "fe80::1",
    "unique local": "fd00::1",
}
ALLOWED = {
    "public IPv6": "2606:4700:4700::1111",
    "NAT64 public": "64:ff9b::8.8.8.8",
    "6to4 public": "2002:808:808::1",
}


@pytest.mark.parametrize("address", REFUSED.values(), ids=REFUSED.keys())
def test_refused_forms(address: str) -> None:
    assert _refused_ip(ipaddress.ip_address(address))
    reason = url_refused(f"http://[{address}]:8080/hook", allow_private=False)
    assert reason is not None and "private" in reason


@pytest.mark.parametrize("address", ALLOWED.values(), ids=ALLOWED.keys())
def test_public_forms_pass(address: str) -> None:
    assert not _refused_ip(ipaddress.ip_address(address))
    assert url_refused(f"https://[{address}]/hook", allow_private=False) is None


def test_a_name_resolving_to_an_embedded_loopback_is_refused() -> None:
    def resolve(host, port):
        return [(10, 1, 6, "", ("64:ff9b::7f00:1", port, 0, 0))]

    reason = url_refused("https://hooks.example.com/x", False, resolve=resolve)
    assert reason is not None and "64:ff9b::7f00:1" in reason
