"""Settings: shared ``RF_`` variables, and each service's own ``RF_<SERVICE>_`` ones."""

from __future__ import annotations

import pytest

from services.gateway.settings import GatewaySettings
from services.scheduler.settings import SchedulerSettings


def test_a_service_prefix_sets_one_services_value_and_the_shared_one_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RF_COMMAND_TIMEOUT_SECONDS", "7")
    monkeypatch.setenv("RF_SCHEDULER_COMMAND_TIMEOUT_SECONDS", "45")
    monkeypatch.setenv("RF_LOG_LEVEL", "DEBUG")
    scheduler, gateway = SchedulerSettings(), GatewaySettings()
    assert scheduler.command_timeout_seconds == 45 and gateway.command_timeout_seconds == 7
    assert scheduler.log_level == gateway.log_level == "DEBUG"


def test_a_setting_passed_in_code_wins_over_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RF_GATEWAY_COMMAND_TIMEOUT_SECONDS", "3")
    assert GatewaySettings().command_timeout_seconds == 3
    assert GatewaySettings(command_timeout_seconds=9).command_timeout_seconds == 9
