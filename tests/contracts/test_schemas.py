"""Published contracts: exported schemas are current, wire names are stable and unique."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections import defaultdict

import pytest

import contracts
import contracts.all
from contracts.base import COMMANDS, EVENTS, Command, CommandRegistry
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
        assert context in {
            "identity",
            "job",
            "gateway",
            "render",
            "process",
            "upload",
            "wallet",
            "billing",
            "payment",
            "scene",
            "fleet",
            "notifier",
        }, name
        assert event[0].isupper() and event.endswith(
            ("ed", "Taken", "Freed", "Held", "Lost", "Set", "Read")
        ), name
        assert cls.schema_version >= 1


def contract_commands() -> dict[str, list[type[Command]]]:
    """Every Command subclass defined in a ``contracts`` module, by its command type."""
    found: dict[str, list[type[Command]]] = defaultdict(list)
    for info in pkgutil.iter_modules(contracts.__path__, "contracts."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, Command)
                and value is not Command
                and value.__module__ == module.__name__
            ):
                found[value.command_type].append(value)
    return found


def test_commands_have_unique_wire_names_in_their_owners_context() -> None:
    found = contract_commands()
    duplicates = {name: classes for name, classes in found.items() if len(classes) > 1}
    assert duplicates == {}, duplicates
    registered = COMMANDS.types()
    assert registered == {name: classes[0] for name, classes in found.items()}
    for name, cls in registered.items():
        assert cls.command_type == name
        assert name.split(".")[0] in {
            "identity",
            "job",
            "render",
            "upload",
            "wallet",
            "billing",
            "payment",
            "scene",
            "notifier",
        }


def test_registering_a_second_command_class_under_a_taken_name_is_refused() -> None:
    taken = next(iter(COMMANDS.types().values()))

    class Impostor(Command):
        command_type = taken.command_type

    with pytest.raises(ValueError, match="registered twice"):
        COMMANDS.register(Impostor)
    assert COMMANDS.types()[taken.command_type] is taken
    assert COMMANDS.register(taken) is taken  # registering the same class again is harmless

    fresh = CommandRegistry()
    fresh.register(taken)
    with pytest.raises(ValueError, match="registered twice"):
        fresh.register(Impostor)
