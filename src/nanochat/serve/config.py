"""What `nanochat serve` is configured with (`ServeConfig`), and the refusal to expose an unauthenticated
server beyond this machine (`check_bind`)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from nanochat.common.errors import UsageError
from nanochat.engine.repetition import CHAT_NO_REPEAT_NGRAM, CHAT_REPETITION_PENALTY

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    allowed_hosts: list[str] | None = None  # None: loopback names when bound to loopback, else any; ["*"]: any
    queue_size: int = 16  # requests that may wait for a free batch slot; beyond that, 503
    batch_slots: int | None = None  # decode rows per worker (requests decoded together); None: 32 on CUDA, 8 otherwise
    log_requests: bool = False
    model_name: str = "nanochat"
    default_max_tokens: int = 512
    retry_after_s: int = 1
    repetition_penalty: float = CHAT_REPETITION_PENALTY  # a request's repetition_penalty / no_repeat_ngram_size win
    no_repeat_ngram: int = CHAT_NO_REPEAT_NGRAM
    allow_origins: frozenset[str] | None = None  # --allow-origin: other sites whose pages may call the API

    def host_allow_list(self) -> set[str] | None:
        """Allowed Host names (lower case, no port), or None for no check."""
        if self.allowed_hosts is not None:
            names = {h.strip().lower().strip("[]") for h in self.allowed_hosts if h.strip()}
            return None if "*" in names else names
        if is_loopback(self.host):
            return set(LOOPBACK_NAMES) | {self.host.lower().strip("[]")}
        return None


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None, insecure: bool) -> None:
    """Refuse to expose an unauthenticated server beyond this machine unless asked to."""
    if not is_loopback(host) and not api_key and not insecure:
        raise UsageError(
            f"refusing to bind {host} without an API key: anyone who can reach it could use the model; "
            "pass --api-key KEY (or --insecure to accept that), or bind 127.0.0.1"
        )
