"""Services never import one another, and the gateway reads other services' tables only
through their query modules (``libs/readmodels``, ADR 0007)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from libs.service import declared

SERVICES = Path(__file__).resolve().parents[2] / "services"


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_no_service_imports_another() -> None:
    for package in (p for p in SERVICES.iterdir() if (p / "__init__.py").exists()):
        for path in package.rglob("*.py"):
            for module in imported_modules(path):
                parts = module.split(".")
                if parts[0] == "services" and len(parts) > 1:
                    assert parts[1] == package.name, f"{path} imports {module}"


def test_the_gateway_has_no_sql_on_other_services_schemas() -> None:
    others = "|".join(s.schema for s in declared() if s.schema != "gateway")
    sql = re.compile(rf"\b(FROM|JOIN|INTO|UPDATE)\s+({others})\.", re.IGNORECASE)
    for path in (SERVICES / "gateway").rglob("*.py"):
        match = sql.search(path.read_text())
        assert match is None, f"{path}: {match and match.group(0)!r}: use libs/readmodels"
