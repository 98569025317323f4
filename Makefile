# The two commands a new user needs: `make demo` (the main job) and `make test`.
PYTHON ?= python3
STAMP := .make-installed

.PHONY: install demo test lint bench dashboards otelcol fuzz

$(STAMP): pyproject.toml setup.py $(wildcard processor/native/*.c processor/native/*.h)
	@# Debian packages the tests use: Prometheus + promtool; buildah + debootstrap build the container image.
	@missing=""; \
	for tool in prometheus:prometheus promtool:prometheus buildah:buildah debootstrap:debootstrap; do \
	  command -v $${tool%%:*} >/dev/null 2>&1 || missing="$$missing $${tool##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi; \
	fi
	$(PYTHON) -m pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(PYTHON) -m processor demo --duration 60

# The OpenTelemetry Collector the templates and the chain tests run (collector-config/otelcol/builder.yaml),
# built with the Go toolchain into a cache outside git; reused when present.
otelcol:
	bash collector-config/otelcol/build.sh

# Every test: first all but the `serial` ones on TEST_JOBS workers (whole files per worker, so module fixtures start
# once), then the `serial` ones alone. `python -m pytest` also runs everything, one test at a time.
TEST_JOBS ?= 2
TEST_ENV := RECOHOP_REQUIRE_NATIVE=1 RECOHOP_REQUIRE_OTELCOL=1
test: install otelcol
	$(PYTHON) -m ruff check .
	@status=0; \
	$(TEST_ENV) $(PYTHON) -m pytest -q -n $(TEST_JOBS) --dist loadfile -m "not serial" --durations=15 || status=$$?; \
	$(TEST_ENV) $(PYTHON) -m pytest -q -m serial || status=$$?; \
	exit $$status

bench: install
	$(PYTHON) -m bench all --duration 20

dashboards: install
	$(PYTHON) -m dashboards build --out dashboards/generated

# Every native scanner entry point under a coverage-guided fuzzer (atheris/libFuzzer) with ASan + UBSan, against its
# reference path (tests/fuzz/); FUZZ_SECONDS per target, two targets at a time. Installs clang and atheris if missing.
FUZZ_SECONDS ?= 25
fuzz: install
	PYTHON=$(PYTHON) bash tests/fuzz/run.sh $(FUZZ_SECONDS)
