"""A generated PII corpus (many forms of each kind) and ordinary recommender values that must pass untouched.

Cards and IBANs are generated with valid check digits (Luhn / mod-97), so they are real-looking, not the
handful of well-known test numbers only.
"""

from __future__ import annotations

import base64
import json
import random

CARD_PREFIXES = {  # brand -> (prefixes, length)
    "visa": (["4"], 16), "visa13": (["4"], 13), "mastercard": (["51", "55", "2221", "2720"], 16),
    "amex": (["34", "37"], 15), "discover": (["6011", "65"], 16), "diners": (["36", "300"], 14),
    "jcb": (["3528", "3589"], 16), "unionpay": (["62"], 16), "visa19": (["4"], 19),
}


def luhn_complete(partial: str) -> str:
    """`partial` plus the check digit that makes it Luhn-valid."""
    for check in "0123456789":
        digits = partial + check
        total = 0
        for i, ch in enumerate(reversed(digits)):
            d = int(ch)
            if i % 2:
                d = d * 2 - 9 if d > 4 else d * 2
            total += d
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable")


def card(rng: random.Random, brand: str) -> str:
    prefixes, length = CARD_PREFIXES[brand]
    prefix = rng.choice(prefixes)
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return luhn_complete(body)


def format_card(number: str, style: str) -> str:
    if style == "plain":
        return number
    sep = " " if style == "spaces" else "-"
    if len(number) == 15:  # Amex 4-6-5
        return sep.join((number[:4], number[4:10], number[10:]))
    return sep.join(number[i:i + 4] for i in range(0, len(number), 4))


def iban(rng: random.Random, country: str, bban_len: int, letters: int = 0) -> str:
    bban = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(letters))
    bban += "".join(rng.choice("0123456789") for _ in range(bban_len - letters))
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(numeric) % 97
    return f"{country}{check:02d}{bban}"


def jwt(rng: random.Random) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    sig = base64.urlsafe_b64encode(rng.randbytes(32)).rstrip(b"=").decode()
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part({'sub': str(rng.randrange(10**9)), 'iat': 1700000000})}.{sig}"


def pii_values(seed: int = 5) -> list[tuple[str, str]]:
    """(kind, raw value) pairs: every kind in several forms."""
    rng = random.Random(seed)
    out: list[tuple[str, str]] = []
    out += [("email", v) for v in (
        "jane.doe+recs@example.com", "obrien@mail.example.co.uk", "a.b-c_d+tag+more@sub.domain.org",
        f"user{rng.randrange(10**6)}@gmail.com", "jürgen.müller+shop@exämple.de", "UPPER.Case@Example.COM")]
    out += [("phone", v) for v in (
        "+1 (415) 555-0132", "+44 20 7946 0958", "+49 30 901820", "+33 1 23 45 67 89", "+81-3-1234-5678",
        "+61 2 9876 5432", "+91 98765 43210", "+5511987654321", "0044 20 7946 0958", "(030) 1234567",
        "415-555-0132", "+1.415.555.0199")]
    for brand in CARD_PREFIXES:
        for style in ("plain", "spaces", "dashes"):
            out.append(("card", format_card(card(rng, brand), style)))
    out += [("ipv4", v) for v in ("203.0.113.42", "192.168.1.20", "10.0.0.1", "8.8.8.8", "255.255.255.255")]
    out += [("ipv6", v) for v in ("2001:db8:85a3::8a2e:370:7334", "fe80::1ff:fe23:4567:890a",
                                   "2001:0db8:0000:0000:0000:ff00:0042:8329", "::1", "2a00:1450:4001:82b::200e",
                                   "::ffff:192.0.2.128")]
    out += [("jwt", jwt(rng)) for _ in range(3)]
    out += [("bearer", f"Bearer {base64.b64encode(rng.randbytes(24)).decode()}"),
            ("bearer", "bearer sk_live_4eC39HqLyjWDarjtT1zdp7dc")]
    out += [("iban", v) for v in (
        iban(rng, "DE", 18), iban(rng, "GB", 18, letters=4), iban(rng, "FR", 23), iban(rng, "NL", 14, letters=4),
        iban(rng, "ES", 20), "DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432")]
    return out


def sentences(values: list[tuple[str, str]]) -> list[str]:
    """Each raw value embedded in prose, as it leaks in messages and queries."""
    templates = ("contact {} please", "failed for {}: timeout", "{}", "user said '{}' twice", "x={};y=1")
    return [templates[i % len(templates)].format(v) for i, (_, v) in enumerate(values)]


ORDINARY = [
    "item-12345", "req-3f9a12bc4d5e", "550e8400-e29b-41d4-a716-446655440000", "4bf92f3577b34da6a3ce929d0e0e4736",
    "00f067aa0ba902b7", "cf-2024.06.1", "als-v3.2.1", "pop-1.3", "1.27.0", "0.8734", "0.000123",
    "2026-11-24T09:49:34.123Z", "2026-11-24 09:49:34", "1732441774123", "1732441774123456789", "home",
    "product_page", "cart", "email", "popularity", "A", "B", "/recommendations", "GET", "12.5ms",
    "recommendation-service-7d9f8-00012", "SKU-000123", "B07XJ8C8F5", "reco.generate", "running shoes",
    "gift for dad", "usb-c cable", "tent 4p", "model server unavailable", "ModelServerError", "worker-3",
    "shard 2 of 3", "top-10 results", "v2", "batch 64", "http://reco.internal:8080/score", "std::vector",
    "12:30:45", "lat 52.52 lon 13.40", "position 3", "order #100234", "bearer of good news",
]
