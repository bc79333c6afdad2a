"""The scaler's SkyPilot venv (``deploy/local/requirements-sky.txt``) installs our runtime
requirements at pyproject.toml's pins, less those SkyPilot's pins exclude, which the scaler
does not import (``tests/scaler/test_skypilot_service.py`` runs the scaler from it), and
``make up`` starts the scaler on SkyPilot from it."""

from __future__ import annotations

import re
import sys
import tomllib

import pytest

from deploy.local.stack import SKY_PYTHON, StackError, service_python
from tests.scaler.sky_home import ROOT

#: Ours that SkyPilot 0.14.1's pins exclude (uvicorn<0.36) or the scaler never imports.
NOT_FOR_THE_SCALER = {
    "fastapi",
    "starlette",
    "uvicorn",
    "httptools",
    "pyjwt",
    "aioboto3",
    "pillow",
    "blender-asset-tracer",
    "sse-starlette",
    "cryptography",  # the notifier's webhook secrets
}


def name(requirement: str) -> str:
    return re.split(r"[\[=<>!~ ]", requirement, maxsplit=1)[0].lower()


def test_the_sky_venv_pins_ours_as_pyproject_does_less_what_the_scaler_does_not_import() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ours = {name(r): r for r in project["dependencies"]}
    lines = (ROOT / "deploy/local/requirements-sky.txt").read_text().splitlines()
    sky = {name(r): r for r in (line.strip() for line in lines) if r and not r.startswith("#")}
    assert sky.pop("skypilot") == "skypilot==0.14.1"
    assert sky == {n: r for n, r in ours.items() if n not in NOT_FOR_THE_SCALER}


def test_make_up_runs_the_scaler_on_skypilot_from_the_sky_venv_and_the_rest_from_ours() -> None:
    on_sky = {"RF_SCALER_PROVIDER": "skypilot"}
    assert service_python("gateway", on_sky) == sys.executable
    assert service_python("scaler", {}) == sys.executable
    assert service_python("scaler", {"RF_SCALER_PROVIDER": "local"}) == sys.executable
    if SKY_PYTHON.is_file():
        assert service_python("scaler", on_sky) == str(SKY_PYTHON)
        assert service_python("scaler", {"RF_PROVIDER": "skypilot"}) == str(SKY_PYTHON)
    else:
        with pytest.raises(StackError, match="make venv"):
            service_python("scaler", on_sky)
