"""OTel consistent probability: thresholds, `th` encoding, tracestate merging, the keep rule."""

from __future__ import annotations

from processor.sampling.consistent import (
    MAX_THRESHOLD,
    encode_th,
    keeps,
    randomness,
    rejection_threshold,
    with_threshold,
)


def test_thresholds_match_the_specification_examples() -> None:
    # From the OTel "TraceState: probability sampling" spec: 100 % -> th:0, 50 % -> th:8, 1 % -> th:fd70a3d70a3d71
    assert encode_th(rejection_threshold(100)) == "0"
    assert encode_th(rejection_threshold(50)) == "8"
    assert encode_th(rejection_threshold(25)) == "c"
    assert encode_th(rejection_threshold(1)) == "fd70a3d70a3d71"
    assert rejection_threshold(0) == MAX_THRESHOLD


def test_keep_rule_uses_low_56_bits() -> None:
    threshold = rejection_threshold(50)
    high_bits_random = bytes(range(9)) + b"\x80" + b"\0" * 6
    assert randomness(high_bits_random) == 0x80 << 48
    assert keeps(high_bits_random, threshold)
    assert not keeps(b"\xff" * 9 + b"\x7f" + b"\xff" * 6, threshold)
    assert not keeps(b"\xff" * 16, MAX_THRESHOLD)


def test_tracestate_merge_keeps_other_members_and_subkeys() -> None:
    assert with_threshold("", "8") == "ot=th:8"
    assert with_threshold("vendor=a", "8") == "ot=th:8,vendor=a"
    assert with_threshold("vendor=a,ot=th:4;rv:0123456789abcd", "8") == "ot=th:8;rv:0123456789abcd,vendor=a"


def test_a_more_selective_upstream_threshold_is_kept() -> None:
    assert with_threshold("ot=th:ff", "fd70a3d70a3d71") == "ot=th:ff"  # upstream kept ~0.4 %
    assert with_threshold("ot=th:8", "fd70a3d70a3d71") == "ot=th:fd70a3d70a3d71"  # upstream 50 %, we 1 %
    assert with_threshold("ot=th:zz", "8") == "ot=th:8"  # unreadable upstream value is replaced
