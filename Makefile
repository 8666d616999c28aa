# The two commands of the README. Each creates .venv and installs what it needs first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CARELOOP := $(VENV)/bin/careloop
# torch must be installed before the rest: a bare `torch` requirement would pull a multi-GB CUDA
# build. If .venv already has torch (say a CUDA build of the same release), it is kept.
TORCH_VERSION ?= 2.13.0

.PHONY: up test install clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet torch==$(TORCH_VERSION)
	$(PIP) install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

up: install
	$(CARELOOP) db upgrade
	$(CARELOOP) model build-demo
	$(CARELOOP) doctor

test: install
	$(PY) -m pytest

clean:
	rm -rf $(VENV) var .pytest_cache
