"""RetryPolicy: how a client retries or hedges Rank calls (gRFC A6), with the load balancing and health
checking that go with it: gRPC's service config says all of it but the hedging (client_hedging.py).

What the channel does (the service config `service_config()` returns):
- `round_robin` over every address of the target (a list, a headless Service's DNS name, an ipv4: URI): each
  call on the next replica whose connection is READY;
- client-side health checking (`healthCheckConfig`, the server's overall service ""), for a fleet — a target
  list or a target URI (dns:///, ipv4:) — : a replica whose grpc.health.v1 Watch says NOT_SERVING — loading,
  a model with nothing to serve, draining after SIGTERM — leaves the rotation before a call fails on it, as
  Kubernetes' readiness takes it out of a Service, and rejoins when it says SERVING again. A single
  "host:port" is not health-checked: with no other replica to go to, a call is better answered with its own
  status (and a health check of a model's service must still reach the server) than refused by the client;
- retries of Rank calls that fail with UNAVAILABLE (a replica gone, loading or draining; a connection lost)
  or RESOURCE_EXHAUSTED (a replica's queue or a tenant's share full) — both are answered before any model
  computes the call, and scoring has no side effect, so another attempt is safe — on the next replica
  (round_robin), with exponential backoff and jitter, never past the call's deadline (gRPC keeps the
  deadline across attempts), at most `max_attempts` in all;
- retry throttling: when more than half of the recent calls failed (token bucket: `throttle_max_tokens`,
  each failure costs 1, each success gives back `throttle_token_ratio`), retries stop until calls succeed
  again, so that a fleet that is short of capacity is not sent its load twice over;
- or, with `hedging_delay_s` set, hedging instead of retrying: another copy of the call goes to the next
  replica if none has answered within the delay (for the tail latency of one slow replica; it costs the extra
  compute of each hedged call), and at once after a copy fails with a retried code. A6 allows one or the
  other per method. The client hedges itself (client_hedging.py): gRPC's C core takes a `hedgingPolicy` and
  never hedges, so the service config then carries neither policy, only the balancing and health checking.

Every retry reaches a server with `grpc-previous-rpc-attempts` metadata, every hedged copy after the first
with `x-adrank-previous-attempts`, and is counted there (adrank_retried_calls_total, summed over the fleet).

Options (defaults and why):
  max_attempts = 3              The first attempt and two retries: with round_robin a retry lands on another
                                replica, and two replicas failing one call in a row is rare; gRPC caps it at 5.
  initial_backoff_s = 0.005     An auction's deadline is a few tens of ms: the first retry must come within
  max_backoff_s = 0.05          a few ms; the backoff grows x2 (with gRPC's jitter) up to 50 ms.
  backoff_multiplier = 2.0
  retry_resource_exhausted = True  A full queue on one replica is often room on the next.
  hedging_delay_s = None        No hedging by default: it spends compute to cut the tail. With it, max_attempts
                                is the number of copies a call may send.
  throttle_max_tokens = 10, throttle_token_ratio = 0.1  gRPC's recommended throttling shape (hedging too).
  max_reconnect_backoff_s = 5   How long at most between tries to reconnect to a replica that went away, so that
                                one back from a restart rejoins within seconds (gRPC's default grows to 120 s).

Thread-safety: an immutable value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

# Rank is the call the clients make; ModelInfer is the same contract over the Open Inference Protocol.
RETRIED_METHODS = (
    {"service": "adrank.v1.Ranking", "method": "Rank"},
    {"service": "inference.GRPCInferenceService", "method": "ModelInfer"},
)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    initial_backoff_s: float = 0.005
    max_backoff_s: float = 0.05
    backoff_multiplier: float = 2.0
    retry_resource_exhausted: bool = True
    hedging_delay_s: float | None = None
    throttle_max_tokens: int = 10
    throttle_token_ratio: float = 0.1
    health_check: bool = True  # leave replicas out while their health says NOT_SERVING
    max_reconnect_backoff_s: float = 5.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 5:
            raise ValueError(f"max_attempts {self.max_attempts}: 1 (no retry) to 5 (gRPC's cap)")
        if self.initial_backoff_s <= 0 or self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("initial_backoff_s must be > 0 and max_backoff_s >= initial_backoff_s")
        if self.backoff_multiplier < 1:
            raise ValueError(f"backoff_multiplier {self.backoff_multiplier} must be >= 1")
        if self.max_reconnect_backoff_s <= 0:
            raise ValueError(f"max_reconnect_backoff_s {self.max_reconnect_backoff_s} must be > 0")
        if self.hedging_delay_s is not None and self.hedging_delay_s < 0:
            raise ValueError(f"hedging_delay_s {self.hedging_delay_s} must be >= 0")

    def codes(self) -> list[str]:
        return ["UNAVAILABLE", *(["RESOURCE_EXHAUSTED"] if self.retry_resource_exhausted else [])]

    def service_config(self, fleet: bool = True) -> str:
        """The channel's service config (JSON), as grpc's `grpc.service_config` channel argument takes it;
        `fleet`: health-check the replicas (a target list or URI, not one "host:port")."""
        method: dict[str, object] = {"name": list(RETRIED_METHODS)}
        # Hedging is the client's own (client_hedging.py): a hedgingPolicy here would be taken and ignored.
        if self.max_attempts > 1 and self.hedging_delay_s is None:
            method["retryPolicy"] = {
                "maxAttempts": self.max_attempts,
                "initialBackoff": f"{self.initial_backoff_s:.6f}s",
                "maxBackoff": f"{self.max_backoff_s:.6f}s",
                "backoffMultiplier": self.backoff_multiplier,
                "retryableStatusCodes": self.codes(),
            }
        config: dict[str, object] = {
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [method],
            "retryThrottling": {"maxTokens": self.throttle_max_tokens, "tokenRatio": self.throttle_token_ratio},
        }
        if self.health_check and fleet:
            config["healthCheckConfig"] = {"serviceName": ""}
        return json.dumps(config)


# The clients' default: an immutable value, shared.
DEFAULT_RETRY = RetryPolicy()
