"""Sampling policies: one module per kind behind `base.Policy`, built by `factory.build_policy`, evaluated
together by `policyset.PolicySet`."""
