# jupyter-ec2 — the two commands a developer needs:
#   make demo   JupyterLab with jupyter-ec2 on the embedded default (a simulated cloud on this machine)
#   make test   the whole suite: lint, Python tests and browser tests
# Both install everything they need first (virtual environment, Python and npm packages, and
# Debian's openssh-server and chromium when missing).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
JUPYTER := $(VENV)/bin/jupyter
# The "instance image": an interpreter any user can run (as on a Deep Learning AMI), used by the
# `existing` environment kind in tests and the demo, and a wheel cache for the `pip` kind.
# Root keeps it in /opt (shared with the notebook users it creates); anyone else in their own
# cache directory, so `make demo` as an ordinary user writes nothing outside the home.
SIM_DIR ?= $(if $(filter 0,$(shell id -u)),/opt/jupyter-ec2-sim,$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/jupyter-ec2-sim)
IMAGE_PY := $(SIM_DIR)/image-python/bin/python
# Bump when the image's packages change, so existing machines get them too.
IMAGE_STAMP := $(SIM_DIR)/image-python/.image-v2
WHEELS := $(SIM_DIR)/wheels
# Builds must never fetch anything but npm packages: a closed loopback proxy makes any other
# download fail at once, on this machine (NOTES.md: the builder's core-meta fallback).
NO_NET := http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9
LABEXT_SRC := $(shell find labextension/src labextension/style labextension/schema -type f 2>/dev/null) labextension/package.json labextension/tsconfig.json
PYTEST_ARGS ?=
# The container-kind instance hosts (jupyter_ec2.testing.containers): a Debian 12 root built with
# debootstrap and a local apt repository, rebuilt when the recipe changes (the stamp is its hash).
ROOTFS_RECIPE := $(sort $(wildcard jupyter_ec2/testing/rootfs/*))
ROOTFS_HASH := $(shell cat $(ROOTFS_RECIPE) 2>/dev/null | sha256sum | cut -c1-16)
CONTAINER_DIR := $(SIM_DIR)/container
CONTAINER_STAMP := $(CONTAINER_DIR)/.recipe-$(ROOTFS_HASH)

.PHONY: demo test test-fast lint install system-deps sim-image container-root cloud-init-schema clean bench

demo: install sim-image container-root
	JUPYTER_EC2_SIM_DIR=$(SIM_DIR) $(PY) -m jupyter_ec2.testing.demo

test: install sim-image container-root cloud-init-schema lint
	JEC2_REQUIRE_CLOUD_INIT=1 $(PY) -m pytest $(PYTEST_ARGS)

test-fast: install sim-image cloud-init-schema
	JEC2_REQUIRE_CLOUD_INIT=1 $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check jupyter_ec2 tests bench
	cd labextension && npm run --silent lint

bench: install sim-image container-root
	@for script in bench/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

install: system-deps $(VENV)/.installed

system-deps:
	@missing=""; \
	[ -x /usr/sbin/sshd ] || missing="$$missing openssh-server"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	$(PYTHON) -c "import ensurepip, venv" 2>/dev/null || missing="$$missing python3-venv"; \
	[ -x /usr/sbin/debootstrap ] || missing="$$missing debootstrap"; \
	[ -x /usr/bin/systemd-nspawn ] || missing="$$missing systemd-container"; \
	[ -x /usr/bin/dpkg-scanpackages ] || missing="$$missing dpkg-dev"; \
	[ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing="$$missing iproute2"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "Installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "Please install these Debian/Ubuntu packages first: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# What the frontend build needs (jupyter labextension build), before the package itself.
	$(PIP) install -q "jupyterlab>=4.2,<5" "hatchling>=1.21" "hatch-jupyter-builder>=0.9" editables
	touch $@

labextension/node_modules/.package-lock.json: labextension/package.json labextension/package-lock.json
	cd labextension && npm ci --no-audit --no-fund --loglevel=error
	touch $@

jupyter_ec2/labextension/static/style.js: $(VENV)/.base labextension/node_modules/.package-lock.json $(LABEXT_SRC)
	cd labextension && PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(NO_NET) npm run --silent build:prod
	touch $@

$(VENV)/.installed: $(VENV)/.base jupyter_ec2/labextension/static/style.js pyproject.toml
	# A reinstall would write the wheel's shared data (install.json) through the develop link
	# below into the source tree, and a wheel built from that tree then holds it twice.
	rm -rf $(VENV)/share/jupyter/labextensions/jupyter-ec2 jupyter_ec2/labextension/install.json
	$(PIP) install -q -e ".[test]"
	# Editable installs leave the labextension in the source tree: link it where JupyterLab looks.
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(JUPYTER) labextension develop --overwrite . >/dev/null
	$(JUPYTER) server extension enable --sys-prefix jupyter_ec2 >/dev/null
	touch $@

sim-image: $(IMAGE_STAMP) $(WHEELS)/.done-v3

$(IMAGE_STAMP):
	@[ "$$(id -u)" = 0 ] || [ -w "$$(dirname $(SIM_DIR))" ] || { echo "$(SIM_DIR) must be writable: run 'sudo make sim-image' once, or set SIM_DIR"; exit 1; }
	mkdir -p $(SIM_DIR) && chmod 755 $(SIM_DIR)
	[ -x $(IMAGE_PY) ] || /usr/bin/python3 -m venv $(SIM_DIR)/image-python
	$(SIM_DIR)/image-python/bin/pip install -q --upgrade pip
	$(SIM_DIR)/image-python/bin/pip install -q jupyter_server ipykernel jupyterlab
	chmod -R a+rX $(SIM_DIR)
	touch $@

# Downloaded by the image's interpreter, so the wheels fit its Python (Debian's, not the venv's).
# pip's own wheel is there for hosts whose python3 has no ensurepip (provisioning adds pip to a
# venv made --without-pip from it). `distributed` and `bokeh` are there for the Dask workers
# (workers and the scheduler's dashboard), `jupyter-collaboration` for saving open notebooks
# before a stop: installed only where a feature asks for them.
$(WHEELS)/.done-v3: $(IMAGE_STAMP)
	mkdir -p $(WHEELS)
	$(SIM_DIR)/image-python/bin/pip download -q -d $(WHEELS) jupyterlab pip distributed bokeh jupyter-collaboration
	chmod -R a+rX $(SIM_DIR)
	touch $@

# Only root can build and boot containers; elsewhere the container tests and demo hosts are skipped.
container-root:
	@if [ "$$(id -u)" != 0 ] || [ ! -x /usr/bin/systemd-nspawn ]; then \
	  echo "container-root: not root or no systemd-nspawn: container instance hosts unavailable (skipped)"; \
	elif [ -e $(CONTAINER_STAMP) ]; then :; else \
	  echo "Building the container root (Debian 12 with debootstrap, about 2 minutes)"; \
	  jupyter_ec2/testing/rootfs/build-root.sh $(CONTAINER_DIR) && touch $(CONTAINER_STAMP); \
	fi

# cloud-init's own validator (`cloud-init schema`), from Debian's packages but NOT installed: an
# installed cloud-init would make this machine look like an instance that never booted (its
# `cloud-init status --wait` blocks). The packages are downloaded and unpacked into a cache the
# project owns; tests run /usr/bin/python3 on the unpacked CLI with PYTHONPATH pointing there
# (tests/test_userdata.py). The package list is the recipe: editing it rebuilds the cache.
CLOUD_INIT_DIR := .cache/cloud-init
CLOUD_INIT_PACKAGES := tests/cloud-init-packages.txt

cloud-init-schema: $(CLOUD_INIT_DIR)/.done

$(CLOUD_INIT_DIR)/.done: $(CLOUD_INIT_PACKAGES)
	rm -rf $(CLOUD_INIT_DIR) && mkdir -p $(CLOUD_INIT_DIR)/debs
	cd $(CLOUD_INIT_DIR)/debs && apt-get download -q $$(grep -v '^#' $(CURDIR)/$(CLOUD_INIT_PACKAGES)) 2>&1 | grep -v unsandboxed || true
	for deb in $(CLOUD_INIT_DIR)/debs/*.deb; do dpkg-deb -x "$$deb" $(CLOUD_INIT_DIR)/root || exit 1; done
	[ "$$(ls $(CLOUD_INIT_DIR)/debs/*.deb | wc -l)" = "$$(grep -cv '^#' $(CLOUD_INIT_PACKAGES))" ] || { echo "apt-get download missed a package of $(CLOUD_INIT_PACKAGES): run apt-get update once"; exit 1; }
	printf '#cloud-config\nssh_deletekeys: true\n' >$(CLOUD_INIT_DIR)/probe.yaml
	PYTHONPATH=$(CLOUD_INIT_DIR)/root/usr/lib/python3/dist-packages /usr/bin/python3 $(CLOUD_INIT_DIR)/root/usr/bin/cloud-init schema --config-file $(CLOUD_INIT_DIR)/probe.yaml
	touch $@

clean:
	rm -rf $(VENV) labextension/node_modules labextension/lib jupyter_ec2/labextension \
	  labextension/tsconfig.tsbuildinfo tests/artifacts .cache
