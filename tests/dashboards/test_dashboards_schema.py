"""The generated Grafana JSON type-checks against Grafana's published dashboard schema.

Grafana publishes its dashboard schema (CUE) as TypeScript types in the npm package `@grafana/schema`; it ships
no JSON Schema. So each built dashboard is written into a TypeScript file as an object literal typed with
those types (the classic dashboard model, `Dashboard`/`Panel`/`RowPanel`, with each panel's options typed by
its plugin's `Options`/`FieldConfig`) and `tsc --strict --noEmit` checks it: required fields, field types,
enum values, and no keys the schema does not have (TypeScript's excess-property check on literals).
Skipped when node/npm are missing; the packages are installed with npm into a temp dir.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from dashboards import build

# The @grafana/schema release whose dashboard default is schemaVersion 39, the version the dashboards declare.
GRAFANA_SCHEMA = "@grafana/schema@11.2.2"
TYPESCRIPT = "typescript@5.5.4"
PANELCFG = "@grafana/schema/dist/esm/raw/composable/{0}/panelcfg/x/{1}PanelCfg_types.gen"

HEADER = f'''import type {{ Dashboard, Panel, RowPanel }} from "@grafana/schema";
import type {{ FieldConfig as TimeSeriesFieldConfig, Options as TimeSeriesOptions }} from "{PANELCFG.format("timeseries", "TimeSeries")}";
import type {{ Options as GaugeOptions }} from "{PANELCFG.format("gauge", "Gauge")}";

// The types spell enum members as TypeScript enums; JSON spells them by value: map each to its values.
type Json<T> = T extends string ? `${{T}}` : T extends readonly (infer U)[] ? Json<U>[]
  : T extends object ? {{ [K in keyof T]: Json<T[K]> }} : T;
type TimeSeriesPanel = Omit<Panel<unknown, TimeSeriesFieldConfig>, "options" | "type">
  & {{ type: "timeseries"; options: TimeSeriesOptions }};
type GaugePanel = Omit<Panel, "options" | "type"> & {{ type: "gauge"; options: GaugeOptions }};
type Checked = Json<Omit<Dashboard, "panels"> & {{ panels: Array<TimeSeriesPanel | GaugePanel | RowPanel> }}>;
'''

pytestmark = pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                                reason="node/npm not installed")


@pytest.fixture(scope="module")
def tsc(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(work dir with @grafana/schema and typescript installed, the tsc script)."""
    work = tmp_path_factory.mktemp("grafana-schema")
    (work / "package.json").write_text('{"private": true}\n')
    done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error",
                           GRAFANA_SCHEMA, TYPESCRIPT], cwd=work, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return work, work / "node_modules" / "typescript" / "bin" / "tsc"


def check(work: Path, tsc_script: Path, models: dict[str, dict]) -> subprocess.CompletedProcess[str]:
    source = [HEADER] + [f"// {name}\nexport const dashboard{i}: Checked = {json.dumps(model, indent=1)};\n"
                         for i, (name, model) in enumerate(sorted(models.items()))]
    (work / "check.ts").write_text("\n".join(source))
    return subprocess.run(["node", str(tsc_script), "--noEmit", "--strict", "--skipLibCheck", "--target", "es2020",
                           "--module", "commonjs", "--moduleResolution", "node", "check.ts"],
                          cwd=work, capture_output=True, text=True, timeout=300)


def test_built_dashboards_match_grafanas_published_schema(tsc: tuple[Path, Path]) -> None:
    models = build.dashboards()
    assert {m["schemaVersion"] for m in models.values()} == {39}
    done = check(*tsc, models)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_the_schema_check_can_fail(tsc: tuple[Path, Path]) -> None:
    """A key the schema lacks, a wrong enum value and a missing required option are each reported."""
    model = build.dashboards()["hop-health.json"]
    timeseries = [p for p in model["panels"] if p["type"] == "timeseries"]
    timeseries[0]["span"] = 4  # grafanalib's pre-v7 width
    timeseries[1]["fieldConfig"]["defaults"]["custom"]["drawStyle"] = "curve"
    del timeseries[2]["options"]["legend"]["showLegend"]
    done = check(*tsc, {"broken.json": model})
    assert done.returncode != 0
    for word in ('"span"', '"curve"', "showLegend"):
        assert word in done.stdout, (word, done.stdout[-3000:])
