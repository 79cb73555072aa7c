# Two entry points: `make sample` (set up, then run the sample pipeline) and `make test`.
SHARED ?= ../shared
RUN ?= runs/sample
PYTEST_ARGS ?=

.PHONY: setup sample test test-fast bench clean

setup:
	./scripts/setup.sh

sample: setup
	GEOBUILD_SHARED=$(SHARED) .venv/bin/geobuild run pipelines/sample.yaml --out $(RUN)

test: setup
	GEOBUILD_SHARED=$(SHARED) .venv/bin/python -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	GEOBUILD_SHARED=$(SHARED) .venv/bin/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: setup
	GEOBUILD_SHARED=$(SHARED) .venv/bin/python -m benchmarks.run_all $(BENCH_ARGS)

clean:
	rm -rf runs .pytest_cache
