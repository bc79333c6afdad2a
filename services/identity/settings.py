from libs.config import TokenSettings


class IdentitySettings(TokenSettings):
    env_section = "identity"
    service_name: str = "identity"
    #: scrypt cost (CPU and memory) for new password hashes; stored hashes carry their own.
    password_scrypt_n: int = 2**14
