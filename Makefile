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

# Fashion-MNIST comes from the Debian package dataset-fashion-mnist; the colour clip art (8,121 PNGs in 22
# category folders, for rcg fit and benchmarks/table1_clipart.py) from openclipart-png. Installed when apt is usable.
CLIPART_DIR ?= /usr/share/openclipart/png
data:
	@missing=""; \
	[ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ] || missing="$$missing dataset-fashion-mnist"; \
	[ -d $(CLIPART_DIR) ] || missing="$$missing openclipart-png"; \
	if [ -z "$$missing" ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "Installing$$missing (Debian packages)..."; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	    || echo "warning: could not install$$missing; see README (Install)"; \
	else \
	  echo "Missing:$$missing. Install with"; \
	  echo "  sudo apt-get install$$missing"; \
	  echo "(Fashion-MNIST: or download the four *-ubyte.gz files into a folder and pass --data-dir FOLDER)."; \
	fi

# One intra-op thread per test process: faster for these tiny models, and independent of the core count.
test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

demo: install data
	$(VENV)/bin/rcg demo

clean-venv:
	rm -rf $(VENV)
