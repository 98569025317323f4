"""Every panel target's PromQL runs against a real Prometheus; key panels match the synthetic ground truth."""

from __future__ import annotations

import pytest
import synthetic_series as truth

from dashboards.validate import evaluate_panels, panel_targets, substitute

TOLERANCE = 0.02  # relative


def _close(got: float, want: float) -> bool:
    return abs(got - want) <= TOLERANCE * abs(want)


def _by_label(results, label: str) -> dict[str, float]:
    return {s.labels[label]: s.value for r in results for s in r.series}


@pytest.fixture(scope="module")
def all_panels(prometheus: str):
    return evaluate_panels(prometheus, {})


def test_every_panel_target_returns_data(all_panels) -> None:
    expected = {(t.panel, t.ref_id) for t in panel_targets()}
    got = {(title, r.ref_id) for title, results in all_panels.items() for r in results}
    assert got == expected
    failures = {f"{title}/{r.ref_id}": r.error or f"no data: {r.expr}"
                for title, results in all_panels.items() for r in results if r.error or not r.series}
    assert not failures


def test_ctr_by_placement_matches_ground_truth(all_panels) -> None:
    got = _by_label(all_panels["CTR by placement"], "placement")
    assert set(got) == set(truth.BASE_CTR)
    for placement, value in got.items():
        assert _close(value, truth.ctr(placement)), (placement, value, truth.ctr(placement))


def test_rates_match_ground_truth(all_panels) -> None:
    for title, want in (("Error rate", truth.ERROR_RATE), ("Cold-start rate", truth.COLD_START_RATE),
                        ("Fallback rate", truth.FALLBACK_RATE)):
        [result] = all_panels[title]
        [series] = result.series
        assert _close(series.value, want), (title, series.value, want)
    hits = _by_label(all_panels["Embedding cache hit rate"], "placement")
    assert len(hits) == 4 and all(_close(v, truth.CACHE_HIT) for v in hits.values())
    conversion = _by_label(all_panels["Conversion rate by placement"], "placement")
    assert all(_close(v, truth.CONVERSIONS_PER_CLICK) for v in conversion.values())


def test_ab_ctr_by_variant(all_panels) -> None:
    got = _by_label(all_panels["A/B CTR by variant"], "variant")
    for variant, value in got.items():
        want = sum(truth.ctr(p, variant) for p in truth.BASE_CTR) / len(truth.BASE_CTR)
        assert _close(value, want), (variant, value, want)


def test_template_variables_filter(prometheus: str) -> None:
    one = evaluate_panels(prometheus, {"placement": "home", "variant": ["B"]})
    got = _by_label(one["CTR by placement"], "placement")
    assert list(got) == ["home"]
    assert _close(got["home"], truth.ctr("home", "B"))
    several = evaluate_panels(prometheus, {"placement": ["cart", "email"]})
    assert set(_by_label(several["Request rate by placement"], "placement")) == {"cart", "email"}


def test_substitute_formats_like_grafana() -> None:
    known = {"placement", "variant"}
    expr = 'x{placement=~"$placement",variant=~"${variant}"}[$__rate_interval]'
    assert substitute(expr, {}, known, "2m") == 'x{placement=~".*",variant=~".*"}[2m]'
    assert substitute(expr, {"placement": ["a.b", "c"], "variant": "$__all"}, known) == \
        'x{placement=~"(a\\\\.b|c)",variant=~".*"}[1m]'
    with pytest.raises(ValueError, match=r"\$service"):
        substitute('x{service_name=~"$service"}', {}, known)
