"""The container image the Kubernetes manifests name (recohop:0.1.0), built from
collector-config/container/Containerfile with buildah (no daemon) and run the way the StatefulSet runs it: as
uid 10001, root filesystem read-only, the production config mounted read-only at /etc/recohop and the data
volume at /var/lib/recohop. Inside it `recohop --version` and `recohop check` pass, `recohop serve` answers
the grpc.health.v1 check the image's HEALTHCHECK runs, writes its write-ahead log to the volume only, and
stops cleanly on SIGTERM.

buildah's own runtime (crun) may refuse a VM's cgroups, so the image's root filesystem is run here through a
private mount namespace and chroot (`unshare -m`, a bind mount remounted read-only) instead of an OCI runtime.
Skipped without root, buildah, unshare or chroot. The base image is RECOHOP_IMAGE_BASE, else Debian bookworm
made from Debian's packages by base-from-debian.sh when debootstrap exists (no image registry needed), else
the Containerfile's default from a registry.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from otlp_peers import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
CONTAINER_DIR = REPO / "collector-config" / "container"
TAG = "recohop:0.1.0"
KEY = "0123456789abcdef0123456789abcdef"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="building and mounting images needs root"),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("buildah", "unshare", "chroot")),
                       reason="buildah, unshare or chroot not installed (Debian: apt-get install buildah)"),
]

# Run a command inside the image's root filesystem ($1) as the image's user, the way the StatefulSet does.
RUN_INSIDE = r"""
set -e
root=$1; data=$2; etc=$3; shift 3
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount --bind "$data" "$root/var/lib/recohop"
mount --bind "$etc" "$root/etc/recohop"
mount -o remount,bind,ro "$root/etc/recohop"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
exec chroot --userspec=10001:10001 "$root" /usr/bin/env -i \
  PATH=/opt/recohop/bin:/usr/sbin:/usr/bin:/sbin:/bin PYTHONDONTWRITEBYTECODE=1 RECOHOP_REQUIRE_NATIVE=1 \
  RECOHOP_PSEUDONYM_KEY=$RECOHOP_PSEUDONYM_KEY HOME=/var/lib/recohop /bin/sh -c "cd /var/lib/recohop && $*"
"""


def run(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def image() -> str:
    env = {"BUILDAH_ISOLATION": "chroot"}  # RUN steps without an OCI runtime
    base = os.environ.get("RECOHOP_IMAGE_BASE") or ("debian" if shutil.which("debootstrap") else "")
    if base:
        env["BASE"] = base
    ca = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
    if ca and Path(ca).is_file():  # a TLS-inspecting proxy between the build and PyPI
        env["EXTRA_CA_FILE"] = ca
    build = run("bash", str(CONTAINER_DIR / "build.sh"), TAG, timeout=1800, env=env)
    assert build.returncode == 0, f"image build failed:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}"
    return TAG


@pytest.fixture
def rootfs(image: str) -> Iterator[Path]:
    container = run("buildah", "from", image).stdout.strip()
    try:
        mount = run("buildah", "mount", container)
        assert mount.returncode == 0, mount.stderr
        yield Path(mount.stdout.strip())
    finally:
        run("buildah", "umount", container)
        run("buildah", "rm", container)


@pytest.fixture
def volumes(tmp_path: Path) -> tuple[Path, Path, int, int]:
    """The production profile rendered (on free loopback ports) as the ConfigMap, and an empty data volume."""
    grpc_port, metrics_port = free_port(), free_port()
    etc, data = tmp_path / "etc", tmp_path / "data"
    render = run(sys.executable, "-m", "processor", "config", "render", "--profile", "recohop", "--out", str(etc),
                 "--set", "recohop_listen_host=127.0.0.1", "--set", f"recohop_otlp_port={grpc_port}",
                 "--set", f"recohop_metrics_port={metrics_port}")
    assert render.returncode == 0, render.stderr
    data.mkdir()
    os.chown(data, 10001, 10001)  # the pod's fsGroup makes the volume the hop's
    return etc, data, grpc_port, metrics_port


def inside(rootfs: Path, etc: Path, data: Path, command: str, **popen: object) -> subprocess.Popen[str]:
    return subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", RUN_INSIDE, "run-inside",
                             str(rootfs), str(data), str(etc), command], text=True,
                            env={**os.environ, "RECOHOP_PSEUDONYM_KEY": KEY}, **popen)  # type: ignore[call-overload]


def inside_output(rootfs: Path, etc: Path, data: Path, command: str) -> tuple[int, str]:
    proc = inside(rootfs, etc, data, command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, out


def test_image_config_matches_the_manifests(image: str) -> None:
    inspect = run("buildah", "inspect", "--type", "image", image)
    config = json.loads(inspect.stdout)["Docker"]["config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["recohop"]
    assert config["Cmd"] == ["serve", "--config", "/etc/recohop/recohop.yaml"]
    assert "/var/lib/recohop" in config["Volumes"]
    assert config["Healthcheck"]["Test"][:3] == ["CMD", "python3", "/opt/recohop/healthcheck.py"]
    assert {"4317/tcp", "4318/tcp", "9464/tcp"} <= set(config["ExposedPorts"])


def test_version_check_and_a_read_only_root(rootfs: Path, volumes: tuple[Path, Path, int, int]) -> None:
    etc, data, _, _ = volumes
    code, out = inside_output(rootfs, etc, data, "id -u; recohop --version; recohop check /etc/recohop/recohop.yaml;"
                                                 " touch /opt/recohop/x || echo root-is-read-only")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "10001"
    assert "recohop 0.1.0" in lines
    assert any(line.startswith("/etc/recohop/recohop.yaml: ok (limits, redaction, spanmetrics, tail_sampling")
               for line in lines), out
    assert "Read-only file system" in out and "root-is-read-only" in lines


def test_serve_answers_the_health_check_and_writes_only_to_the_volume(
        rootfs: Path, volumes: tuple[Path, Path, int, int], tmp_path: Path) -> None:
    etc, data, grpc_port, _ = volumes
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        serve = inside(rootfs, etc, data, "exec recohop serve --config /etc/recohop/recohop.yaml", stdout=log,
                       stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def healthy() -> bool:
            code, _ = inside_output(rootfs, etc, data, f"python3 /opt/recohop/healthcheck.py 127.0.0.1:{grpc_port}")
            return code == 0

        wait_until(healthy, "the image's health check to pass", timeout=60, seen=lambda: log_path.read_text()[-2000:])
        os.killpg(serve.pid, signal.SIGTERM)
        assert serve.wait(timeout=60) == 0, log_path.read_text()[-2000:]
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
    entries = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert any(e["message"].startswith("recohop listening") for e in entries)  # the production template: JSON logs
    written = [p for p in data.rglob("*")]
    assert any(p.parts[-2] == "wal" or p.name == "wal" for p in written), written
    assert all(p.stat().st_uid == 10001 for p in written)
