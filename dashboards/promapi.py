"""A minimal Prometheus HTTP API client (instant and range queries) for validation and previews."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass


class PrometheusError(RuntimeError):
    """The API refused a query (bad PromQL, timeout) or could not be reached."""


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    points: list[tuple[float, float]]  # (unix time, value); one point for an instant query

    @property
    def value(self) -> float:
        return self.points[-1][1]


def _get(base_url: str, path: str, params: dict[str, str], timeout: float) -> dict:
    url = f"{base_url.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (operator-supplied URL)
            body = json.load(resp)
    except urllib.error.HTTPError as exc:  # 400/422 carry the PromQL error in the body
        try:
            body = json.load(exc)
        except ValueError:
            raise PrometheusError(f"{path}: HTTP {exc.code}") from exc
    except (urllib.error.URLError, TimeoutError, ValueError) as exc:
        raise PrometheusError(f"{path}: {exc}") from exc
    if body.get("status") != "success":
        raise PrometheusError(f"{body.get('errorType', 'error')}: {body.get('error', 'unknown')}")
    return body["data"]


def _series(data: dict) -> list[Series]:
    kind = data["resultType"]
    if kind == "scalar":
        return [Series({}, [(float(data["result"][0]), float(data["result"][1]))])]
    if kind == "vector":
        return [Series(r["metric"], [(float(r["value"][0]), float(r["value"][1]))]) for r in data["result"]]
    if kind == "matrix":
        return [Series(r["metric"], [(float(t), float(v)) for t, v in r["values"]]) for r in data["result"]]
    raise PrometheusError(f"unexpected result type {kind!r}")


def query(base_url: str, expr: str, at: float | None = None, timeout: float = 10.0) -> list[Series]:
    params = {"query": expr} | ({"time": f"{at:.3f}"} if at is not None else {})
    return _series(_get(base_url, "/api/v1/query", params, timeout))


def query_range(base_url: str, expr: str, start: float, end: float, step: float,
                timeout: float = 10.0) -> list[Series]:
    params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
    return _series(_get(base_url, "/api/v1/query_range", params, timeout))
