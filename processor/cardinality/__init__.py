"""Cardinality control: label allowlists, forbidden keys, value bucketing, series limits, top-K folding."""
