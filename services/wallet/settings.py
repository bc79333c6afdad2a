from pydantic import Field

from libs.config import BaseServiceSettings


class WalletSettings(BaseServiceSettings):
    env_section = "wallet"
    service_name: str = "wallet"

    #: How often the hold sweeper looks for pending holds past their ``expires_at``
    #: (``RF_WALLET_HOLD_SWEEP_SECONDS``).
    hold_sweep_seconds: float = Field(default=60.0, gt=0)
    #: ``ExpireHold`` commands the sweeper has in flight at once.
    hold_sweep_concurrency: int = Field(default=16, ge=1)
