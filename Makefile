# Developer entry points. Every target calls .venv/bin/... directly: no activation needed.
#   make up | down | status    local stack (PostgreSQL, NATS, Valkey and the services)
#   make test PYTEST_ARGS='-k jobs -x'
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# MiniStack (the local S3) pins a botocore that conflicts with aioboto3's: its own venv.
S3_VENV := .venv-s3
# Blender as a Python module (bpy, 950 MB) for the farm's Blender plugin; it pins numpy.
BLENDER_VENV := .venv-blender
# The scaler with SkyPilot (RF_SCALER_PROVIDER=skypilot): SkyPilot pins uvicorn<0.36 and
# click<8.2, so the scaler runs from a venv of its own (docs/scaling.md, "Install").
SKY_VENV := .venv-sky
PYTEST_ARGS ?=

.PHONY: venv up down status test lint typecheck bench bench-quick schemas clean

# (Re)install into .venv whenever pyproject.toml changes.
venv: $(VENV)/.installed $(S3_VENV)/.installed $(BLENDER_VENV)/.installed $(SKY_VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[dev]'
	@touch $@

$(S3_VENV)/.installed: deploy/local/requirements-s3.txt
	@test -x $(S3_VENV)/bin/python || $(PYTHON) -m venv $(S3_VENV)
	$(S3_VENV)/bin/python -m pip install -q -r deploy/local/requirements-s3.txt
	@touch $@

$(BLENDER_VENV)/.installed: deploy/local/requirements-blender.txt
	@test -x $(BLENDER_VENV)/bin/python || $(PYTHON) -m venv $(BLENDER_VENV)
	$(BLENDER_VENV)/bin/python -m pip install -q -r deploy/local/requirements-blender.txt
	@touch $@

$(SKY_VENV)/.installed: deploy/local/requirements-sky.txt pyproject.toml
	@test -x $(SKY_VENV)/bin/python || $(PYTHON) -m venv $(SKY_VENV)
	$(SKY_VENV)/bin/python -m pip install -q -r deploy/local/requirements-sky.txt
	$(SKY_VENV)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

up: venv
	$(PY) -m deploy.local.stack up

# down and status need no (re)install: without a venv nothing of ours runs.
down:
	@if [ -x $(PY) ]; then $(PY) -m deploy.local.stack down; else echo "no $(VENV): nothing to stop"; fi

status:
	@if [ -x $(PY) ]; then $(PY) -m deploy.local.stack status; else echo "no $(VENV): nothing runs"; fi

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy

bench: venv
	$(PY) -m bench

# A subset with shorter runs (sections 3, 4, 5 at 100k events, 8, 10 with 256 MiB, 11, 13, 14, 15, 17), under two minutes.
bench-quick: venv
	$(PY) -m bench --quick

schemas: venv
	$(PY) -m contracts.export

# Stops the local stack first: .run/ holds its data (the dev database) and secrets.
clean: down
	rm -rf .run .venv-s3 .venv-blender .venv-sky .mypy_cache .ruff_cache .pytest_cache *.egg-info build dist
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
