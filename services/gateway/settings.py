from pydantic import Field

from libs.config import TokenSettings


class GatewaySettings(TokenSettings):
    env_section = "gateway"
    service_name: str = "gateway"
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8700
    public_url: str = "http://127.0.0.1:8700"
    #: Worker processes serving the port (SO_REUSEPORT), each a full gateway runtime, under a
    #: parent that restarts a dead one (``services/gateway/workers.py``). ``make up``: cores.
    gateway_workers: int = 1
    #: Bind the HTTP port with SO_REUSEPORT (set by the parent for its workers).
    gateway_reuse_port: bool = False
    #: Token buckets: sustained requests per second and burst, per user and per API key.
    rate_limit_user_per_second: float = 20
    rate_limit_user_burst: int = 60
    rate_limit_key_per_second: float = 10
    rate_limit_key_burst: int = 30
    #: Unauthenticated routes (register, login, refresh), per client IP.
    rate_limit_ip_per_second: float = 2
    rate_limit_ip_burst: int = 20
    #: Tokens a process leases from a shared Redis bucket at a time, and how long a lease
    #: may be spent (over-admission across P processes: at most P x (tokens - 1)).
    rate_limit_lease_tokens: int = 10
    rate_limit_lease_seconds: float = 1.0
    #: Razorpay's public key id, shown with each top-up order (Checkout opens with it).
    razorpay_key_id: str = ""
    idempotency_ttl_seconds: int = 24 * 3600
    #: Above the services' 5 s read-your-writes wait, so a slow reply is not taken for a lost one.
    command_timeout_seconds: float = 10.0
    page_size_max: int = 200
    #: API keys verified are kept this long per process; a revocation (identity's
    #: ``ApiKeyRevoked`` on the bus) drops one at once.
    api_key_cache_seconds: float = 60.0
    #: How often the keys used since the last time are noted ("last used", once a minute).
    api_key_use_flush_seconds: float = 1.0
    #: Action log: rows written in batches this often, and days of partitions kept.
    action_log_flush_seconds: float = 0.2
    action_log_retention_days: int = 90
    #: The farm's pools, as the deadline bridge names them (the shared ``RF_FARM_POOL`` and
    #: ``RF_TEST_POOL``): ``/v1/admin/jobs?pool=`` matches jobs on the full-render pool or
    #: the test-render pool by these names.
    farm_pool: str = "none"
    test_pool: str = "test"
    #: How long an operator's retry of a quarantined stream may take.
    quarantine_retry_timeout_seconds: float = 30.0
    #: The live feed (``GET /v1/events/stream``): a comment line after this many seconds
    #: without an item, connections one user may hold at once (across processes), and how
    #: often each process looks for new items of every user (the delivery delay's bound).
    sse_heartbeat_seconds: float = Field(default=15.0, gt=0)
    sse_connections_per_user: int = Field(default=5, ge=1)
    sse_poll_seconds: float = Field(default=0.1, gt=0)
