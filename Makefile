# dino-dinov2: `make demo` (install + main job on synthetic data), `make test` (install + tests)
PYTHON ?= python3
PYTEST_ARGS ?=
export PYTHON

.PHONY: install install-tests demo test

install:
	bash tools/install.sh

install-tests:
	WITH_TESTS=1 bash tools/install.sh

demo: install
	bash tools/run_synthetic.sh

test: install-tests
	$(PYTHON) -m pytest tests -v -p no:cacheprovider $(PYTEST_ARGS)
