# Two commands on a fresh machine: `make run` (the site on the embedded defaults) and `make test` (the whole suite).
# Both install exactly what requirements/dev.txt pins, with hashes; `make lock` refreshes the locks on purpose.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# The CPU torch wheel lies in /opt/wheels on these machines (pip's find-links); elsewhere point this at
# https://download.pytorch.org/whl/cpu (the hash in the lock still decides what is accepted).
TORCH_CPU_INDEX ?=
PIP_INSTALL := $(BIN)/python -m pip install -q --require-hashes --no-deps $(if $(TORCH_CPU_INDEX),--extra-index-url $(TORCH_CPU_INDEX))
UV_COMPILE := $(BIN)/uv pip compile --quiet --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --no-header --annotation-style line

.PHONY: install lock run test lint system-packages services clean

# A lock change rebuilds the environment from nothing, so it holds the lock and nothing else (tests check it).
$(VENV)/.installed: requirements/dev.txt pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -r requirements/dev.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed

# Resolve every dependency once: the GPU worker's lock (PyPI's CUDA torch) first, then the development lock
# (same versions, CPU torch) and the web lock (no ML stack), each constrained by the one before. Versions already
# in a lock are kept; `make lock UPGRADE=1` moves everything to the newest releases pyproject.toml allows.
lock: install
	$(UV_COMPILE) $(if $(UPGRADE),--upgrade) pyproject.toml --extra ml requirements/build.in requirements/torch-cuda.in \
		-o requirements/worker.txt
	sed '/^torch==/d;/^ *--hash/d;/^ *#/d;s/ *\\$$//' requirements/worker.txt > requirements/worker.pins
	$(UV_COMPILE) pyproject.toml --extra ml --extra dev requirements/build.in --find-links /opt/wheels \
		--override requirements/torch-cpu.in -c requirements/worker.pins -o requirements/dev.txt
	sed '/^ *--hash/d;/^ *#/d;s/ *\\$$//' requirements/dev.txt > requirements/dev.pins
	$(UV_COMPILE) pyproject.toml requirements/build.in -c requirements/dev.pins -o requirements/web.txt
	rm -f requirements/worker.pins requirements/dev.pins

run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput -v 0
	$(BIN)/python manage.py ensure_demo_user
	$(BIN)/python manage.py runserver $(HOST):$(PORT)

# Debian's Chromium for the browser tests (no browser download from a test tool) and docker-compose, which
# validates docker/compose.yaml without an engine.
system-packages:
	@command -v chromium >/dev/null 2>&1 && command -v docker-compose >/dev/null 2>&1 || \
		{ apt-get update -q && apt-get install -y -q chromium docker-compose; }

# PostgreSQL and Redis run on these machines; start them if they are down.
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
	@for i in $$(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && exit 0; sleep 1; done; echo "PostgreSQL or Redis did not come up" >&2; exit 1

lint: install
	$(BIN)/ruff check .

test: install system-packages services lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache
