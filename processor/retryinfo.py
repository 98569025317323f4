"""gRPC status details carrying google.rpc.RetryInfo: built by the receiver, read by the exporter.

The Go collector reads RetryInfo from `grpc-status-details-bin`; the Python SDK exporter reads the
`google.rpc.retryinfo-bin` trailer. The receiver sends both; the exporter reads either.
"""

from __future__ import annotations

from collections import namedtuple

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"
RETRY_INFO_KEY = "google.rpc.retryinfo-bin"


class AbortStatus(namedtuple("AbortStatus", ("code", "details", "trailing_metadata")), grpc.Status):
    """A grpc.Status for `context.abort_with_status`."""


def retry_status(code: grpc.StatusCode, message: str, retry_after: float) -> AbortStatus:
    seconds = int(retry_after)
    delay = duration_pb2.Duration(seconds=seconds, nanos=int((retry_after - seconds) * 1e9))
    retry_info = error_details_pb2.RetryInfo(retry_delay=delay)
    detail = any_pb2.Any()
    detail.Pack(retry_info)
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return AbortStatus(code, message, (
        (STATUS_DETAILS_KEY, status.SerializeToString()),
        (RETRY_INFO_KEY, retry_info.SerializeToString()),
    ))


def retry_delay(error: grpc.RpcError) -> float | None:
    """The server's requested delay in seconds, if it sent RetryInfo."""
    trailers = getattr(error, "trailing_metadata", lambda: None)() or ()
    for key, value in trailers:
        try:
            if key == RETRY_INFO_KEY:
                info = error_details_pb2.RetryInfo.FromString(value)
                return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
            if key == STATUS_DETAILS_KEY:
                for detail in status_pb2.Status.FromString(value).details:
                    if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                        info = error_details_pb2.RetryInfo()
                        detail.Unpack(info)
                        return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
        except Exception:  # a malformed trailer means "no advice", not a crash
            continue
    return None
