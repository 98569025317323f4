"""TLS, mutual TLS and bearer-token auth on the receiver; TLS + token on the exporter."""

from __future__ import annotations

import grpc
import pytest
from certs import make_pki

from processor.signals import METHOD_PATHS, REQUEST_TYPES


def one_span_request() -> bytes:
    request = REQUEST_TYPES["traces"]()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = b"\x07" * 16, b"\x08" * 8, "secure"
    return request.SerializeToString()


def export(channel: grpc.Channel, metadata=None) -> grpc.RpcError | bytes:  # noqa: ANN001
    try:
        return channel.unary_unary(METHOD_PATHS["traces"])(one_span_request(), timeout=10, metadata=metadata)
    except grpc.RpcError as error:
        return error


def test_bearer_token_required(downstream, start_hop) -> None:
    config = f"""
receiver:
  auth: {{bearer_token_env: TEST_RECOHOP_TOKEN}}
exporter: {{endpoint: {downstream.endpoint}}}
"""
    hop = start_hop(config, env={"TEST_RECOHOP_TOKEN": "s3cret-token"})
    with grpc.insecure_channel(hop.endpoint) as channel:
        for metadata in (None, (("authorization", "Bearer wrong"),)):
            error = export(channel, metadata)
            assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert export(channel, (("authorization", "Bearer s3cret-token"),)) == b""
    downstream.wait_for_spans(1)
    assert "s3cret-token" not in hop.log()


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_tls_receiver(tmp_path, downstream, start_hop, mutual: bool) -> None:
    pki = make_pki(tmp_path)
    config = f"""
receiver:
  tls:
    cert_file: {pki['server_cert']}
    key_file: {pki['server_key']}
    ca_file: {pki['ca']}
    client_auth: {str(mutual).lower()}
exporter: {{endpoint: {downstream.endpoint}}}
"""
    hop = start_hop(config)
    ca = pki["ca"].read_bytes()
    client_creds = grpc.ssl_channel_credentials(ca, pki["client_key"].read_bytes(), pki["client_cert"].read_bytes())
    with grpc.secure_channel(hop.endpoint, client_creds) as channel:
        assert export(channel) == b""
    if mutual:  # without a client certificate the handshake fails
        with grpc.secure_channel(hop.endpoint, grpc.ssl_channel_credentials(ca)) as channel:
            assert isinstance(export(channel), grpc.RpcError)
    with grpc.insecure_channel(hop.endpoint) as channel:  # plaintext is refused
        assert isinstance(export(channel), grpc.RpcError)
    downstream.wait_for_spans(1)


def test_exporter_speaks_tls_with_token_to_next_hop(tmp_path, start_hop, downstream) -> None:
    """hop A (plain in) → TLS + token → hop B (TLS + auth) → downstream."""
    pki = make_pki(tmp_path)
    hop_b = start_hop(f"""
receiver:
  tls: {{cert_file: {pki['server_cert']}, key_file: {pki['server_key']}}}
  auth: {{bearer_token_env: HOP_TOKEN}}
exporter: {{endpoint: {downstream.endpoint}}}
""", env={"HOP_TOKEN": "tok-123"}, name="b")
    hop_a = start_hop(f"""
exporter:
  endpoint: {hop_b.endpoint}
  insecure: false
  tls: {{ca_file: {pki['ca']}}}
  bearer_token_env: HOP_TOKEN
""", env={"HOP_TOKEN": "tok-123"}, name="a")
    with grpc.insecure_channel(hop_a.endpoint) as channel:
        assert export(channel) == b""
    downstream.wait_for_spans(1)
