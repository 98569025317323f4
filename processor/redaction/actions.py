"""What a key rule does to one value: the generalisations (coarser but still useful values).

Each function takes the attribute's Python value (str, int, float, bool or bytes) and returns the string
that replaces it; anything it cannot read becomes a typed tag, never the raw value.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence

ACTIONS = ("pseudonymise", "drop", "mask", "generalise", "keep")
GENERALISE_KINDS = ("ip", "age", "geo", "coord")
DEFAULT_AGE_BANDS = (18, 25, 35, 45, 55, 65)

_ISO_SUBDIVISION = re.compile(r"^([A-Za-z]{2})-[A-Za-z0-9]{1,3}$")
_COUNTRY = re.compile(r"^[A-Za-z]{2}$")


def generalise_ip(value: object) -> str:
    """IPv4 -> its /24, IPv6 -> its /48 (an IPv4-mapped IPv6 address counts as IPv4)."""
    if not isinstance(value, str):
        return "<ip>"
    text = value.strip()
    parts = text.split(".")
    # ASCII digits only: str.isdigit() is also true for "²" and other digits int() refuses (issue 20).
    if len(parts) == 4 and all(p.isascii() and p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in parts):
        return f"{int(parts[0])}.{int(parts[1])}.{int(parts[2])}.0/24"  # the common case, without ipaddress
    port_free = text.rsplit(":", 1)[0] if text.count(":") == 1 else text  # 10.1.2.3:443
    port_free = port_free.strip("[]").split("%", 1)[0]
    try:
        addr = ipaddress.ip_address(port_free)
    except ValueError:
        return "<ip>"
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


class Guarded:
    """A generalisation that never refuses a request: a value it cannot read becomes its typed tag and is
    counted (no attribute value may cost more than itself; issue 20: `client.address = "².1.1.1"` made the IP
    generalisation raise, and the whole request was refused with INTERNAL)."""

    def __init__(self, inner: Callable[[object], str], tag: str) -> None:
        self.inner = inner
        self.tag = tag
        self.failures = 0

    def __call__(self, value: object) -> str:
        try:
            return self.inner(value)
        except Exception:  # noqa: BLE001 - any failure on one value costs that value only
            self.failures += 1
            return self.tag


def make_age(bands: Sequence[int] = DEFAULT_AGE_BANDS) -> Callable[[object], str]:
    """Age -> band such as `25-34`, `<18`, `65+`, from the band lower bounds."""
    bounds = sorted(bands)

    def generalise_age(value: object) -> str:
        try:
            age = float(value) if not isinstance(value, (bool, bytes)) else float("nan")  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return "<age>"
        if not 0 <= age < 150:
            return "<age>"
        if age < bounds[0]:
            return f"<{bounds[0]}"
        for low, high in zip(bounds, bounds[1:], strict=False):
            if age < high:
                return f"{low}-{high - 1}"
        return f"{bounds[-1]}+"

    return generalise_age


def generalise_geo(value: object) -> str:
    """Location -> country: `US-CA` -> `US`, `Berlin, DE` -> `DE`, `DE` stays; anything else -> `<geo>`."""
    if not isinstance(value, str):
        return "<geo>"
    text = value.strip()
    if _COUNTRY.match(text):
        return text.upper()
    sub = _ISO_SUBDIVISION.match(text)
    if sub:
        return sub.group(1).upper()
    if "," in text:
        last = text.rsplit(",", 1)[1].strip()
        if last and not any(ch.isdigit() for ch in last):
            return last.upper() if _COUNTRY.match(last) else last
    return "<geo>"


def generalise_coord(value: object) -> str:
    """A latitude or longitude -> one decimal (about 11 km): where, roughly, not which house; else `<geo>`."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return "<geo>"
    try:
        number = float(value)
    except ValueError:
        return "<geo>"
    if not -180.0 <= number <= 180.0:
        return "<geo>"
    return f"{round(number, 1):.1f}"
