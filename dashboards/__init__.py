"""Dashboards and alerts as code for recohop and the recommender it carries.

Python definitions (grafanalib dashboards, alert and recording rules) are the source; `python -m dashboards
build` writes the Grafana JSON and Prometheus rule files, `validate` runs every panel's PromQL against a
Prometheus, `preview` draws the overview dashboard to a PNG.
"""
