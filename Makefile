# rcg: `make demo` runs every stage on Fashion-MNIST; `make test` runs the test suite.
# Both create .venv when missing. torch and torchvision are pinned and installed FIRST, so that
# nothing later lets pip resolve another (multi-GB) build of them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
export HF_HUB_OFFLINE := 1

.PHONY: test demo install data clean-venv

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH_PINS)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]' $(TORCH_PINS)
	@touch $@

# Fashion-MNIST comes from the Debian package dataset-fashion-mnist.
data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "Installing Fashion-MNIST (Debian package dataset-fashion-mnist)..."; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	    || echo "warning: could not install dataset-fashion-mnist; see README (Data)"; \
	else \
	  echo "Fashion-MNIST not found in $(FMNIST_DIR). Install it with"; \
	  echo "  sudo apt-get install dataset-fashion-mnist"; \
	  echo "or download the four *-ubyte.gz files into a folder and pass --data-dir FOLDER."; \
	fi

# One intra-op thread per test process: faster for these tiny models, and independent of the core count.
test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

demo: install data
	$(VENV)/bin/rcg demo

clean-venv:
	rm -rf $(VENV)
