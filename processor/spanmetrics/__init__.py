"""Span-to-metric derivation, used by `processor/stages/spanmetrics.py`.

rules.py (the rules file) -> plan.py (per span name, compiled) -> derive.py (the one-pass scan of a request)
-> aggregate.py (series slots, numpy counters/histograms, series limits) -> exposition.py (/metrics) and
otlp.py (OTLP output on flush); exemplars.py holds exemplar candidates until tail sampling decides.
"""
