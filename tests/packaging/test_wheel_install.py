"""Installed as users install it: the built wheel in a fresh virtualenv (no access to the checkout), every
command a user starts with run from another working directory. Catches files read relative to the source tree,
package data left out of the wheel and imports of code that is not installed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from otlp_peers import REPO_ROOT, free_port, wait_until

from processor.signals import METHOD_PATHS, REQUEST_TYPES

pytestmark = pytest.mark.slow

KEY = "wheel-test-key-0123456789abcdef"


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist from the checkout, built once for every wheel of this module: only what MANIFEST.in and the
    package data declare gets in (no build products lying in the checkout)."""
    out = tmp_path_factory.mktemp("sdist")
    built = subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(out), str(REPO_ROOT)],
                           capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stderr[-3000:]
    (tarball,) = out.glob("recohop-*.tar.gz")
    return tarball


def build_wheel(sdist: Path, work: Path, build_env: dict[str, str] | None = None) -> Path:
    """The wheel from the sdist, as a package index would build it."""
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"),
                            str(sdist)], capture_output=True, text=True, timeout=900, env=build_env)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (work / "dist").glob("recohop-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the venv's bin directory, a working directory outside the checkout)."""
    work = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(sdist, work)
    subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True, timeout=300)
    bin_dir = work / "venv" / "bin"
    pip = subprocess.run([str(bin_dir / "pip"), "install", "-q", f"{wheel}[demo]"], capture_output=True, text=True,
                         timeout=1200)
    assert pip.returncode == 0, pip.stderr[-3000:]
    run_dir = work / "elsewhere"
    run_dir.mkdir()
    return bin_dir, run_dir


def env() -> dict[str, str]:
    """The user's environment: nothing pointing into the checkout."""
    out = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RECOHOP_NATIVE", "RECOHOP_REQUIRE_NATIVE")}
    out["RECOHOP_PSEUDONYM_KEY"] = KEY
    return out


def recohop(installed: tuple[Path, Path], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    bin_dir, run_dir = installed
    result = subprocess.run([str(bin_dir / "recohop"), *args], cwd=run_dir, capture_output=True, text=True,
                            env=env(), timeout=timeout)
    assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-3000:])
    return result


def test_the_wheel_is_what_runs(installed: tuple[Path, Path]) -> None:
    bin_dir, run_dir = installed
    code = ("import importlib.util, processor, processor.native._tracestore, processor.native._redact; "
            "print(processor.__file__); print(importlib.util.find_spec('bench'))")
    out = subprocess.run([str(bin_dir / "python"), "-c", code], cwd=run_dir, capture_output=True, text=True,
                         env=env(), timeout=60)
    assert out.returncode == 0, out.stderr
    module_file, bench = out.stdout.split()
    assert Path(module_file).is_relative_to(bin_dir.parent), "imported from the venv, not the checkout"
    assert bench == "None", "benchmark code is not part of the installed package"
    assert "recohop" in recohop(installed, "--version").stdout


def test_config_commands(installed: tuple[Path, Path]) -> None:
    _, run_dir = installed
    assert "pipeline:" in recohop(installed, "config", "show-default").stdout
    recohop(installed, "config", "show-default", "--out", "set")
    assert "ok" in recohop(installed, "check", "set/hop.yaml").stdout
    assert "ok" in recohop(installed, "policy", "check", "set/policies.yaml").stdout
    recohop(installed, "config", "render", "--profile", "all", "--out", "rendered")
    for name in ("agent/otelcol-agent.yaml", "gateway/otelcol-gateway.yaml", "recohop/recohop.yaml",
                 "recohop/policies.yaml", "backend/otelcol-backend.yaml", "kubernetes/statefulset.yaml"):
        assert (run_dir / "rendered" / name).stat().st_size > 0, name
    assert "ok" in recohop(installed, "check", "rendered/recohop/recohop.yaml").stdout
    # A stage without its file key uses the shipped default file.
    (run_dir / "minimal.yaml").write_text("pipeline:\n  - type: tail_sampling\n  - type: spanmetrics\n")
    assert "ok" in recohop(installed, "check", "minimal.yaml").stdout
    assert "receiver.endpoint" in recohop(installed, "config", "reference").stdout


def test_dashboards_build(installed: tuple[Path, Path]) -> None:
    _, run_dir = installed
    recohop(installed, "dashboards", "build", "--out", "dash")
    assert (run_dir / "dash" / "recommender-overview.json").stat().st_size > 1000


def test_serve_with_the_builtin_default(installed: tuple[Path, Path]) -> None:
    """Zero config from an empty directory: serves, takes a span, writes the file sink on SIGTERM, exits 0."""
    bin_dir, run_dir = installed
    ready = run_dir / "ready"
    port = free_port()
    log = open(run_dir / "serve.log", "wb")  # noqa: SIM115 - the process writes it
    proc = subprocess.Popen([str(bin_dir / "recohop"), "serve", "--listen", f"127.0.0.1:{port}",
                             "--metrics-listen", "off", "--ready-file", str(ready)], cwd=run_dir, env=env(),
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        wait_until(lambda: ready.exists() or proc.poll() is not None, "recohop serve to be ready", timeout=60)
        assert proc.poll() is None, (run_dir / "serve.log").read_text()
        request = REQUEST_TYPES["traces"]()
        span = request.resource_spans.add().scope_spans.add().spans.add(
            trace_id=b"\x07" * 16, span_id=b"\x08" * 8, name="reco.generate", start_time_unix_nano=1,
            end_time_unix_nano=2)
        span.status.code = 2  # an error trace: kept by the default policies
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            channel.unary_unary(METHOD_PATHS["traces"])(request.SerializeToString(), timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, (run_dir / "serve.log").read_text()
    assert "reco.generate" in (run_dir / "recohop-out" / "export.jsonl").read_text()
    assert "NOT BUILT" not in (run_dir / "serve.log").read_text()


def test_demo(installed: tuple[Path, Path]) -> None:
    _, run_dir = installed
    result = recohop(installed, "demo", "--duration", "10", "--out", "demo-out", timeout=600)
    assert "report written to" in result.stdout
    assert (run_dir / "demo-out" / "dashboards" / "recommender-overview.json").exists()


def test_without_a_c_compiler_it_installs_and_says_so(sdist: Path, tmp_path: Path) -> None:
    """No compiler: the optional extensions are skipped, the hop runs its pure-Python paths and warns loudly."""
    wheel = build_wheel(sdist, tmp_path, {**os.environ, "CC": "/bin/false", "LDSHARED": "/bin/false"})
    assert ".so" not in subprocess.run([sys.executable, "-m", "zipfile", "-l", str(wheel)], capture_output=True,
                                       text=True, check=True).stdout
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True, timeout=300)
    bin_dir = tmp_path / "venv" / "bin"
    pip = subprocess.run([str(bin_dir / "pip"), "install", "-q", str(wheel)], capture_output=True, text=True,
                         timeout=1200)
    assert pip.returncode == 0, pip.stderr[-3000:]
    (tmp_path / "run").mkdir()
    result = subprocess.run([str(bin_dir / "recohop"), "replay", "--policies", "builtin:policies/default.yaml",
                             str(REPO_ROOT / "tests" / "packaging" / "tiny-capture.jsonl")], cwd=tmp_path / "run",
                            capture_output=True, text=True, env=env(), timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "NATIVE SCANNER" in result.stderr and "NOT BUILT" in result.stderr
