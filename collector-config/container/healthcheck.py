"""Container health check over grpc.health.v1 (the service Kubernetes' grpc probes call): exit 0 when the
hop's receiver answers SERVING, 1 otherwise. Usage: healthcheck.py [HOST:PORT] [SERVICE]"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str]) -> int:
    endpoint = argv[1] if len(argv) > 1 else "127.0.0.1:4317"
    service = argv[2] if len(argv) > 2 else ""
    try:
        with grpc.insecure_channel(endpoint) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                              timeout=2)
    except grpc.RpcError as exc:
        print(f"recohop health: {endpoint}: {exc.code().name}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"recohop health: {endpoint}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
