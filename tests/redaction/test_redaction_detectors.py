"""Value detectors: every corpus form is found and tagged, ordinary recommender values are not, and the cheap
prefilter never changes a result (property test against the full combined regex)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redaction_corpus import ORDINARY, pii_values, sentences

from processor.redaction.detectors import KINDS, TAGS, Detectors, luhn_ok

PII = pii_values(seed=11)


@pytest.mark.parametrize(("kind", "raw"), PII, ids=[f"{k}-{i}" for i, (k, _) in enumerate(PII)])
def test_each_form_is_replaced_by_its_tag(kind: str, raw: str) -> None:
    detectors = Detectors()
    for text in (raw, f"see {raw} now"):
        result = detectors.scan(text)
        assert result is not None, f"{kind} not detected"
        redacted, kinds = result
        assert raw not in redacted
        assert kind in kinds
        assert TAGS[kind] in redacted


def test_values_embedded_in_prose_are_replaced_and_prose_kept() -> None:
    detectors = Detectors()
    for text, (kind, raw) in zip(sentences(PII), PII, strict=True):
        redacted, kinds = detectors.scan(text) or ("", ())
        assert raw not in redacted and kind in kinds
    assert detectors.scan("mail a+b@example.org or call +44 20 7946 0958") == (
        "mail <email> or call <phone>", ("email", "phone"))


@pytest.mark.parametrize("value", ORDINARY)
def test_ordinary_recommender_values_pass(value: str) -> None:
    assert Detectors().scan(value) is None


def test_card_needs_luhn_and_brand() -> None:
    detectors = Detectors()
    assert detectors.scan("4111 1111 1111 1111") is not None
    assert detectors.scan("4111 1111 1111 1112") is None  # Luhn fails
    assert luhn_ok("79927398713") and not luhn_ok("79927398710")
    assert detectors.scan("1234567812345670") is None  # Luhn-valid, but no card brand starts with 1


def test_only_enabled_kinds_run() -> None:
    only_email = Detectors(["email"])
    assert only_email.scan("a@b.co and 203.0.113.9") == ("<email> and 203.0.113.9", ("email",))
    assert Detectors([]).scan("a@b.co") is None
    with pytest.raises(ValueError):
        Detectors(["passport"])


_ALPHABET = st.sampled_from(list("0123456789 .-:+()@/abcdefxyzABCDEFXYZ_=;eyJ") + ["Bearer ", "::", "eyJ"])
_FRAGMENTS = st.sampled_from([raw for _, raw in PII] + ORDINARY)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_ALPHABET, _FRAGMENTS), max_size=12).map("".join))
def test_prefilter_never_changes_the_result(text: str) -> None:
    """`possible_kinds` only skips work: the result equals the full combined regex of every kind."""
    detectors = Detectors()
    everything = detectors._regex_for(frozenset(KINDS))
    assert detectors.scan(text) == (detectors._scan(text, everything) if len(text) >= 3 else None)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_text_is_safe_to_scan(text: str) -> None:
    result = Detectors().scan(text)
    if result is not None:
        redacted, kinds = result
        assert kinds and all(k in KINDS for k in kinds)
        assert isinstance(redacted, str)
