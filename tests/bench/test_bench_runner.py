"""`bench all --against DIR` (bench/runner.py): every hop row runs a second time right after itself on another
checkout's code, and the ratios compare each row with its twin and each base row with the base's pass-through."""

from __future__ import annotations

from pathlib import Path

from bench.runner import BASE, Settings, hop_rows, ratios


def settings(tmp_path: Path, against: Path | None) -> Settings:
    return Settings(duration=1, warmup=0, clients=1, streams=1, channels=1, fresh_ids=True, workdir=tmp_path,
                    rotel=False, auto_stages=False, only_rows=["recohop_passthrough", "builtin_default"],
                    against=against)


def test_each_row_is_followed_by_its_twin_on_the_other_checkout(tmp_path: Path) -> None:
    base = tmp_path / "base"
    rows = hop_rows(settings(tmp_path, base), [])
    assert [r.name for r in rows] == ["recohop_passthrough", "recohop_passthrough" + BASE,
                                      "builtin_default", "builtin_default" + BASE]
    for row, twin in zip(rows[::2], rows[1::2], strict=True):
        assert twin.config == row.config and twin.transport == row.transport
        assert twin.env == {"PYTHONPATH": str(base)} and not row.env
    assert [r.name for r in hop_rows(settings(tmp_path, None), [])] == ["recohop_passthrough", "builtin_default"]


def test_ratios_pair_rows_with_their_twins() -> None:
    rows = [{"name": name, "kind": "hop", "spans_per_s": rate} for name, rate in (
        ("recohop_passthrough", 500.0), ("recohop_passthrough@base", 400.0),
        ("builtin_default", 300.0), ("builtin_default@base", 200.0))]
    out = ratios(rows)
    assert out["builtin_default/passthrough"] == 300 / 500
    assert out["builtin_default@base/passthrough"] == 200 / 400  # against the base's own pass-through
    assert out["builtin_default/builtin_default@base"] == 1.5
    assert out["recohop_passthrough/recohop_passthrough@base"] == 1.25
