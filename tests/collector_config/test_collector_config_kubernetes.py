"""The Kubernetes manifests parse and agree with the recohop config they carry: ports, probes, Secret, budget."""

from __future__ import annotations

import pytest
import yaml

from processor import render
from processor.config import parse_config
from processor.config_node import Node

MIB = 1024 * 1024


def _manifests(overrides: dict[str, str] | None = None) -> dict[str, dict]:
    out = {}
    for text in render.render("kubernetes", overrides or {}).values():
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                out[doc["kind"]] = doc
    return out


@pytest.mark.parametrize("overrides", [{}, {"recohop_otlp_port": "5317", "recohop_metrics_port": "9100",
                                            "memory_limit_mib": "3072", "replicas": "5",
                                            "recohop_service": "hop", "namespace": "prod"}],
                         ids=["defaults", "custom"])
def test_manifests_agree_with_the_hop_config(overrides: dict[str, str]) -> None:
    m = _manifests(overrides)
    assert set(m) == {"Service", "ConfigMap", "Secret", "StatefulSet"}
    for doc in m.values():
        assert doc["apiVersion"] and doc["metadata"]["name"]
        assert doc["metadata"]["namespace"] == overrides.get("namespace", "observability")

    hop_text = m["ConfigMap"]["data"]["recohop.yaml"]
    hop = parse_config(Node(yaml.safe_load(hop_text), "configmap:recohop.yaml"))  # the hop's own schema
    receiver_port = int(hop.receiver.endpoint.rsplit(":", 1)[1])
    metrics_port = int(hop.telemetry.metrics_endpoint.rsplit(":", 1)[1])
    assert hop.receiver.endpoint.startswith("0.0.0.0:"), "kubelet probes and the gateway connect from outside"
    assert hop.exporter.endpoint is not None, "a file sink dies with the pod"

    sts, svc = m["StatefulSet"], m["Service"]
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"otlp-grpc": receiver_port, "metrics": metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == receiver_port, probe
    # headless Service in front of the StatefulSet, selecting its pods, exposing the same ports
    assert svc["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert sts["spec"]["replicas"] == int(overrides.get("replicas", "3"))
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    svc_ports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    assert svc_ports == {"otlp-grpc": (receiver_port, "otlp-grpc"), "metrics": (metrics_port, "metrics")}
    # config mounted where the command line looks for it, with the rule files next to it
    (volume,) = pod["volumes"]
    assert volume["configMap"]["name"] == m["ConfigMap"]["metadata"]["name"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert set(mounts) == {"config", "data"}
    assert container["args"] == ["serve", "--config", f"{mounts['config']['mountPath']}/recohop.yaml"]
    # WAL and disk queue live on the pod's own data volume (the root filesystem is read-only)
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data" and container["securityContext"]["readOnlyRootFilesystem"]
    data_dir = mounts["data"]["mountPath"]
    (sampling,) = [s for s in hop_config_stages(hop_text) if s["type"] == "tail_sampling"]
    assert sampling["wal"]["dir"].startswith(data_dir + "/")
    assert str(hop.exporter.spill.dir).startswith(data_dir + "/")
    for stage in yaml.safe_load(hop_text)["pipeline"]:
        for key in ("rules", "policies"):
            if key in stage:
                assert stage[key] in m["ConfigMap"]["data"], f"{stage['type']}.{key} not in the ConfigMap"
    # the pseudonym key comes from the Secret, as env RECOHOP_PSEUDONYM_KEY
    env = {e["name"]: e for e in container["env"]}
    ref = env["RECOHOP_PSEUDONYM_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == m["Secret"]["metadata"]["name"]
    assert ref["key"] in m["Secret"]["stringData"]
    assert "pseudonym" not in hop_text.split("pipeline:")[0], "no key material in the config"


def hop_config_stages(hop_text: str) -> list[dict]:
    return yaml.safe_load(hop_text)["pipeline"]


@pytest.mark.parametrize("limit_mib", ["256", "1024", "8192"])
def test_resource_limits_match_the_memory_budget(limit_mib: str) -> None:
    m = _manifests({"memory_limit_mib": limit_mib})
    container = m["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    limit = container["resources"]["limits"]["memory"]
    assert limit == f"{limit_mib}Mi"
    assert container["resources"]["requests"]["memory"] == limit
    hop = yaml.safe_load(m["ConfigMap"]["data"]["recohop.yaml"])
    sampling = next(s for s in hop["pipeline"] if s["type"] == "tail_sampling")
    buffers = sampling["max_bytes"] + hop["exporter"]["queue"]["max_bytes"]
    assert buffers <= 0.6 * int(limit_mib) * MIB, "buffers must leave headroom for the runtime under the limit"
    assert buffers >= 0.5 * int(limit_mib) * MIB, "and use the budget they are given"


def test_grace_period_covers_the_decision_wait() -> None:
    m = _manifests({"decision_wait": "45s"})
    assert m["StatefulSet"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 45 + 10


def test_pseudonym_key_defaults_to_empty_so_nothing_secret_is_rendered() -> None:
    assert _manifests()["Secret"]["stringData"]["key"] == ""
    assert _manifests({"pseudonym_key": "abc123"})["Secret"]["stringData"]["key"] == "abc123"


@pytest.mark.parametrize("volume_mib", ["512", "2048", "20480"])
def test_disk_budgets_fit_the_data_volume(volume_mib: str) -> None:
    """The WAL's and the disk queue's byte budgets derive from the volume and leave room for segment slack."""
    m = _manifests({"data_volume_mib": volume_mib})
    (claim,) = m["StatefulSet"]["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == f"{volume_mib}Mi"
    hop = yaml.safe_load(m["ConfigMap"]["data"]["recohop.yaml"])
    (sampling,) = [s for s in hop["pipeline"] if s["type"] == "tail_sampling"]
    disk = sampling["wal"]["max_bytes"] + hop["exporter"]["spill"]["max_bytes"]
    assert 0.5 * int(volume_mib) * MIB <= disk <= 0.8 * int(volume_mib) * MIB
