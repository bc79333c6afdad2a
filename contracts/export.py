"""Export the JSON Schema of every event, command, the job envelope and the error shape.

``python -m contracts.export`` rewrites ``contracts/schemas/``; a test fails when the files
there differ from what the models produce, so the published schemas never go stale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import contracts.all  # noqa: F401  (registers every event and command)
from contracts.base import COMMANDS, EVENTS
from contracts.envelope import JobEnvelope
from contracts.errors import ErrorBody
from contracts.notifications import CATALOGUE

SCHEMA_DIR = Path(__file__).parent / "schemas"


def schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema."""
    out: dict[str, dict[str, Any]] = {
        "JobEnvelope.json": JobEnvelope.model_json_schema(mode="serialization"),
        "ErrorBody.json": ErrorBody.model_json_schema(mode="serialization"),
    }
    for name, cls in sorted(EVENTS.types().items()):
        schema = cls.model_json_schema(mode="serialization")  # as stored: decimals are strings
        schema["x-event-type"] = name
        schema["x-schema-version"] = cls.schema_version
        out[f"events/{name}.v{cls.schema_version}.json"] = schema
    for kind, spec in sorted(CATALOGUE.items()):
        schema = spec.payload.model_json_schema(mode="serialization")
        schema["x-notification-kind"] = kind.value
        schema["x-trigger-events"] = list(spec.triggers)
        out[f"notifications/{kind.value}.json"] = schema
    for name, cmd in sorted(COMMANDS.types().items()):
        schema = cmd.model_json_schema()
        schema["x-command-type"] = name
        out[f"commands/{name}.json"] = schema
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main() -> None:
    wanted = schemas()
    for old in SCHEMA_DIR.rglob("*.json"):
        if str(old.relative_to(SCHEMA_DIR)) not in wanted:
            old.unlink()
    for name, schema in wanted.items():
        path = SCHEMA_DIR / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(schema))
    print(f"wrote {len(wanted)} schemas to {SCHEMA_DIR}")


if __name__ == "__main__":
    main()
