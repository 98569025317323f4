"""Rendering: every profile and variant renders complete YAML; --set applies; bad parameters are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from processor import render
from processor.cli import main

REAL_COMPANIONS = all(p.exists() for p in render.COMPANION_FILES.values())

VARIANTS = [(name, {}) for name in render.PROFILES] + [
    ("gateway", {"resolver": "k8s"}),
    ("gateway", {"resolver": "static", "recohop_hosts": "10.0.0.1:4317,10.0.0.2:4317"}),
    ("recohop", {"recohop_exporter": "file", "file_sink_path": "out/kept.jsonl"}),
]


@pytest.mark.parametrize(("profile", "overrides"), VARIANTS, ids=lambda v: str(v) if isinstance(v, str) else "-")
def test_every_profile_renders_complete_commented_yaml(profile: str, overrides: dict[str, str]) -> None:
    files = render.render(profile, overrides)
    expected = {out for _, out in render.PROFILES[profile].files}
    assert expected <= set(files)
    for name in expected:
        text = files[name]
        assert "${" not in text.replace("${env:", ""), f"{name}: unrendered placeholder"
        assert text.lstrip().startswith("#"), f"{name}: should open with a comment saying what it is"
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
        assert docs and all(isinstance(d, dict) for d in docs), name


def test_every_parameter_is_used_and_every_placeholder_known() -> None:
    used: set[str] = set()
    for name in render.PROFILES:
        used |= set(render.profile_parameters(name))
    assert used == set(render.PARAMETERS)
    for path in render.TEMPLATES_DIR.rglob("*.y*ml"):
        for match in render.PLACEHOLDER.finditer(path.read_text()):
            key = match.group(1)
            assert (key in render.PARAMETERS or key in render.DERIVED or key.endswith(("_block", "_embedded"))), \
                f"{path.name}: unknown placeholder {key}"


def test_defaults_are_valid_values() -> None:
    for name, param in render.PARAMETERS.items():
        param.validate(name, param.default)


def test_set_overrides_apply_and_derived_values_follow() -> None:
    files = render.render("recohop", {"recohop_otlp_port": "5317", "memory_limit_mib": "2048",
                                      "backend_host": "collector.example", "decision_wait": "30s"})
    cfg = yaml.safe_load(files["recohop.yaml"])
    assert cfg["receiver"]["endpoint"].endswith(":5317")
    assert cfg["exporter"]["endpoint"] == "collector.example:4317"
    assert cfg["exporter"]["queue"]["max_bytes"] == 2048 * 1024 * 1024 * 15 // 100
    sampling = next(s for s in cfg["pipeline"] if s["type"] == "tail_sampling")
    assert sampling["max_bytes"] == 2048 * 1024 * 1024 * 45 // 100
    assert sampling["decision_wait"] == "30s"


@pytest.mark.parametrize(("profile", "overrides", "message"), [
    ("agent", {"nope": "1"}, "unknown parameter 'nope' for profile agent; known parameters: agent_grpc_port"),
    ("agent", {"replicas": "3"}, "unknown parameter 'replicas' for profile agent"),
    ("kubernetes", {"replicas": "three"}, "parameter replicas: expected a positive integer, got 'three'"),
    ("gateway", {"resolver": "consul"}, "parameter resolver: expected one of dns, k8s, static, got 'consul'"),
    ("gateway", {"recohop_hosts": "a:1"}, "recohop_hosts is not used by profile gateway as configured "
                                          "(it applies with resolver=static)"),
    ("gateway", {"resolver": "static", "recohop_hosts": "a"}, "parameter recohop_hosts: expected host:port"),
    ("recohop", {"queue_max_bytes": "1"}, "queue_max_bytes cannot be set: it is derived (15% of memory_limit_mib"),
    ("recohop", {"recohop_otlp_port": "70000"}, "expected a port number 1-65535"),
    ("kubernetes", {"namespace": "Prod NS"}, "expected a Kubernetes name"),
    ("kubernetes", {"pseudonym_key": "line1\nline2"}, "expected a single line, got 11 characters"),
    ("nope", {}, "unknown profile 'nope'; expected one of agent, gateway, recohop, backend, kubernetes"),
])
def test_bad_parameters_are_refused_clearly(profile: str, overrides: dict[str, str], message: str) -> None:
    with pytest.raises(render.RenderError) as exc:
        render.render(profile, overrides)
    assert message in str(exc.value)


def test_secret_value_is_quoted_not_injected() -> None:
    key = 'k: "x"\n'.strip() + " # not a comment"
    secret = yaml.safe_load(render.render("kubernetes", {"pseudonym_key": key})["secret.yaml"])
    assert secret["stringData"]["key"] == key


def test_cli_render_writes_files_and_applies_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["config", "render", "--profile", "agent", "--set", "gateway_host=gw.internal",
                 "--set", "gateway_otlp_port=14317", "--out", str(tmp_path)])
    assert code == 0
    cfg = yaml.safe_load((tmp_path / "otelcol-agent.yaml").read_text())
    assert cfg["exporters"]["otlp/gateway"]["endpoint"] == "gw.internal:14317"
    assert str(tmp_path / "otelcol-agent.yaml") in capsys.readouterr().out


def test_cli_render_all_shares_parameters_across_profiles(tmp_path: Path) -> None:
    assert main(["config", "render", "--profile", "all", "--set", "recohop_otlp_port=6317",
                 "--out", str(tmp_path)]) == 0
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert {"agent/otelcol-agent.yaml", "gateway/otelcol-gateway.yaml", "recohop/recohop.yaml",
            "backend/prometheus.yml", "kubernetes/statefulset.yaml"} <= written
    gateway = yaml.safe_load((tmp_path / "gateway/otelcol-gateway.yaml").read_text())
    assert gateway["exporters"]["loadbalancing/traces"]["resolver"]["dns"]["port"] == "6317"  # otelcol wants a string here
    hop = yaml.safe_load((tmp_path / "recohop/recohop.yaml").read_text())
    assert hop["receiver"]["endpoint"].endswith(":6317")


def test_cli_rejects_unknown_parameter_with_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["config", "render", "--profile", "backend", "--set", "replica=2", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown parameter 'replica' for profile backend" in err
    assert not any(tmp_path.iterdir()), "nothing may be written when a parameter is wrong"
    code = main(["config", "render", "--profile", "backend", "--set", "novalue", "--out", str(tmp_path)])
    assert code == 2 and "--set expects key=value, got 'novalue'" in capsys.readouterr().err


def test_cli_params_lists_defaults_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "params", "--profile", "gateway"]) == 0
    out = capsys.readouterr().out
    assert "resolver = dns (one of dns, k8s, static)" in out
    assert "recohop_otlp_port = 4317" in out


def test_cli_show_default_prints_the_builtin_default(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from processor.commands import config as config_command
    from processor.config import DEFAULT_CONFIG

    if DEFAULT_CONFIG.exists():
        assert main(["config", "show-default"]) == 0
        assert capsys.readouterr().out == DEFAULT_CONFIG.read_text()
    monkeypatch.setattr(config_command, "DEFAULT_CONFIG", tmp_path / "missing" / "hop.yaml")
    assert main(["config", "show-default"]) == 1
    err = capsys.readouterr().err
    assert "the built-in default" in err and "cannot be read" in err


@pytest.mark.skipif(not REAL_COMPANIONS, reason="policy/redaction/derivation files not written yet: "
                    + ", ".join(str(p) for p in render.COMPANION_FILES.values()))
def test_checked_in_kubernetes_manifests_match_the_templates() -> None:
    """collector-config/kubernetes/ is an artefact of `recohop config render --profile kubernetes`."""
    checked_in = render.COLLECTOR_CONFIG_DIR / "kubernetes"
    rendered = render.render("kubernetes")
    assert sorted(p.name for p in checked_in.glob("*.yaml")) == sorted(rendered)
    for name, text in rendered.items():
        assert (checked_in / name).read_text() == text, (
            f"collector-config/kubernetes/{name} is stale: run "
            "`recohop config render --profile kubernetes --out collector-config/kubernetes`")


def test_readme_documents_every_parameter_and_profile() -> None:
    readme = (render.COLLECTOR_CONFIG_DIR / "README.md").read_text()
    for name in render.PARAMETERS:
        assert f"| `{name}` |" in readme, f"collector-config/README.md lacks parameter {name}"
    for profile in render.PROFILES:
        assert f"`{profile}`" in readme


def test_show_default_out_writes_a_self_contained_runnable_set(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`config show-default --out DIR`: the built-in config and copies of the shipped rule files it references;
    `recohop check` passes on it from any directory, and it runs the same pipeline as the built-in default."""
    from processor.config import load_config

    out = tmp_path / "set"
    assert main(["config", "show-default", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["derivations.yaml", "hop.yaml", "policies.yaml",
                                                     "redaction.yaml"]
    stages = yaml.safe_load((out / "hop.yaml").read_text())["pipeline"]
    assert not [s for s in stages if any(str(v).startswith("builtin:") for v in s.values())]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECOHOP_PSEUDONYM_KEY", "show-default-test-key-0123456789")
    capsys.readouterr()
    assert main(["check", str(out / "hop.yaml")]) == 0, capsys.readouterr().err
    written = load_config(out / "hop.yaml")
    builtin = load_config(None)
    assert [n.data for n in written.stage_nodes if "rules" not in n.data and "policies" not in n.data] == [
        n.data for n in builtin.stage_nodes if "rules" not in n.data and "policies" not in n.data]
    for name in ("policies", "redaction", "derivations"):
        assert (out / f"{name}.yaml").read_text() == (render.COLLECTOR_CONFIG_DIR / name / "default.yaml").read_text()
