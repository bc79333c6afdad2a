from libs.config import TokenSettings


class GatewaySettings(TokenSettings):
    env_section = "gateway"
    service_name: str = "gateway"
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8700
    public_url: str = "http://127.0.0.1:8700"
    #: Token buckets: sustained requests per second and burst, per user and per API key.
    rate_limit_user_per_second: float = 20
    rate_limit_user_burst: int = 60
    rate_limit_key_per_second: float = 10
    rate_limit_key_burst: int = 30
    #: Unauthenticated routes (register, login, refresh), per client IP.
    rate_limit_ip_per_second: float = 2
    rate_limit_ip_burst: int = 20
    idempotency_ttl_seconds: int = 24 * 3600
    #: Above the services' 5 s read-your-writes wait, so a slow reply is not taken for a lost one.
    command_timeout_seconds: float = 10.0
    page_size_max: int = 200
