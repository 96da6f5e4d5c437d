# The two commands: `make demo` (the main job on the embedded local stack) and `make test`.
# Each does all of its own setup on a fresh machine (virtualenv, pip packages, kcat); the
# Kafka jars are resolved from Maven Central by the local stack itself on first start.

VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup setup-helm demo test lint faults fuzz soak truth-long loadtest bench-producer bench-sink bench-worker bench-queries clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all,dev,bench]'
	touch $@

setup: $(VENV)/.installed
	@missing=""; \
	command -v kcat >/dev/null || missing="$$missing kcat"; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	if [ -n "$$missing" ]; then apt-get update -qq && apt-get install -y -qq $$missing; fi

# helm, for tests/unit/test_helm_chart.py only: built from source (minutes the first time)
setup-helm:
	@command -v helm >/dev/null || [ -x "$$(go env GOPATH)/bin/helm" ] || \
		go install helm.sh/helm/v3/cmd/helm@v3.22.0

demo: setup
	spendstream demo

lint: setup setup-helm
	ruff check .
	ruff format --check .
	mypy

# two test processes (tests of one file stay together), each starting its own services
test: lint
	$(PY) -m pytest -q -n 2 --dist loadfile

# the long fault-injection run: every fault kind, repeated, under load, checked against the
# ledger (tests/faults/test_faults.py LONG; rows in $(FAULTS_RESULTS), table in
# tests/faults/README.md). The suite runs the short version.
FAULTS_RESULTS ?= loadtest/results/faults-$(shell date -u +%Y%m%dT%H%M%S)/runs.jsonl
faults: setup
	FAULTS=long FAULTS_RESULTS=$(FAULTS_RESULTS) $(PY) -m pytest -q tests/faults/test_faults.py

# the long fuzz run: a million inputs per target (tests/fuzz/run.py; results in
# tests/faults/README.md). FUZZ_RUNS=20000 for a quick one.
FUZZ_RUNS ?= 1000000
fuzz: setup
	nice -n 19 $(PY) -m tests.fuzz.run --runs $(FUZZ_RUNS)

# the long budget-truth property run: thousands of random streams through the worker's stages
# against the reference model (tests/unit/test_budget_truth.py, docs/budget-truth.md)
truth-long: setup
	HYPOTHESIS_PROFILE=long nice -n 19 $(PY) -m pytest -q --timeout=0 tests/unit/test_budget_truth.py

# the resource-bounds soak: 15 minutes (a warm-up of 9.3, twice the longest state horizon), 1M
# users / 10M sessions through a worker and a sink, RSS plotted and what the worker's memory is
# made of into loadtest/results/soak-*/ (loadtest/soak.py; results in tests/faults/README.md)
soak: setup
	$(PY) -m loadtest.soak --minutes 15

# the load-test harness (loadtest/README.md): the whole pipeline at a rate, checked against its
# ledger, results in loadtest/results/SCENARIO-TIME/. make loadtest SCENARIO=catch-up ARGS=...
SCENARIO ?= steady
ARGS ?= --compare
loadtest: setup
	PYTHONPATH=$(CURDIR) $(PY) -m streams loadtest run --scenario $(SCENARIO) $(ARGS)

bench-producer: setup
	$(PY) -m loadtest.bench_producer

bench-sink: setup
	$(PY) -m loadtest.bench_sink

bench-worker: setup
	$(PY) -m loadtest.bench_worker

bench-queries: setup
	$(PY) -m loadtest.bench_queries --events 100000000

clean:
	spendstream local down || true
	rm -rf $(VENV)
