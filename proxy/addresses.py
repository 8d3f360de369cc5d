"""Addresses a server listens on or is reached at: `host:port`, `[ipv6]:port`, parsed for people."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from proxy.policy.fields import check_host


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str
    port: int  # 0: any free port (tests)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return is_loopback(self.host)


def parse_listen(text: str) -> ListenAddress:
    """`host:port` or `[ipv6]:port`; raises ValueError with a message for people."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if not bracket or not port_text or not _is_ipv6(host):
            raise ValueError(f"{text[:60]!r} is not [ipv6-address]:port, e.g. [::1]:6432")
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or not host:
            raise ValueError(f"{text[:60]!r} needs host:port, e.g. 127.0.0.1:6432")
        if ":" in host:
            raise ValueError(
                f"write an IPv6 address in brackets, e.g. [::1]:6432, not {text[:60]!r}"
            )
        if (error := check_host(host)) is not None:
            raise ValueError(error)
    if not (port_text.isascii() and port_text.isdigit() and int(port_text) <= 65535):
        raise ValueError(f"the port in {text[:60]!r} must be a number from 0 to 65535")
    return ListenAddress(host, int(port_text))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def check_listen(text: str) -> str | None:
    try:
        parse_listen(text)
    except ValueError as exc:
        return str(exc)
    return None
