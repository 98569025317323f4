"""recohop benchmark harness: one run measures the parse-only limit, the load generator's own ceiling,
the recohop hop (pass-through, each stage, the built-in default, any extra config) and rotel, all against
the same null sink on this machine. Entry point: `python -m bench all|smoke` (see `bench/__main__.py`)."""
