"""Published contracts: exported schemas are current, wire names are stable and unique."""

from __future__ import annotations

from contracts.base import COMMANDS, EVENTS
from contracts.export import SCHEMA_DIR, render, schemas


def test_the_exported_json_schemas_are_up_to_date() -> None:
    wanted = schemas()
    on_disk = {str(p.relative_to(SCHEMA_DIR)) for p in SCHEMA_DIR.rglob("*.json")}
    assert on_disk == set(wanted), "run `make schemas` and commit contracts/schemas"
    for name, schema in wanted.items():
        assert (SCHEMA_DIR / name).read_text() == render(schema), (
            f"{name} is stale: run `make schemas` and commit contracts/schemas"
        )


def test_every_event_name_is_context_dot_past_tense_name() -> None:
    for name, cls in EVENTS.types().items():
        context, _, event = name.partition(".")
        assert context in {"identity", "job", "gateway", "render", "process"}, name
        assert event[0].isupper() and event.endswith(("ed", "Taken", "Freed")), name
        assert cls.schema_version >= 1


def test_commands_have_unique_wire_names_in_their_owners_context() -> None:
    for name, cls in COMMANDS.types().items():
        assert cls.command_type == name
        assert name.split(".")[0] in {"identity", "job", "render"}
