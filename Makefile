# glocal: two entry points, both self-installing on a fresh machine.
#   make demo   - install if needed, then run the main job on the embedded default (no network, no weights)
#   make test   - install if needed, then run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.glocal-installed

.PHONY: demo test install lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,deep,serve,onnx,pretrained]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m glocal demo --out demo_output

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check glocal tests benchmarks

clean:
	rm -rf demo_output .pytest_cache
