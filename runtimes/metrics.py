"""The runtime's own Prometheus metrics; vLLM's /metrics serves them next to vLLM's."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

PREFIX = "stokehold_runtime"
REJECTION_REASONS = (
    "overloaded",
    "draining",
    "unauthorized",
    "not_served",
    "too_many_sequences",
    "too_large",
    "body_timeout",
    "client_gone",
)

COMPILE_CACHE_RESULTS = ("hit", "miss", "corrupt")


class RuntimeMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.in_flight = Gauge(f"{PREFIX}_in_flight_requests", "Inference requests being served now", registry=registry)
        self.in_flight_sequences = Gauge(
            f"{PREFIX}_in_flight_sequences",
            "Sequences the requests in flight generate (n or best_of times prompts): what the concurrency limit counts",
            registry=registry,
        )
        self.receiving_bodies = Gauge(
            f"{PREFIX}_receiving_bodies", "Requests whose body is still arriving: not admitted, not counted in flight", registry=registry
        )
        self.max_concurrency = Gauge(
            f"{PREFIX}_max_concurrency", "Concurrent requests served before answering 429 (0: no limit)", registry=registry
        )
        self.rejected = Counter(
            f"{PREFIX}_rejected_requests",
            "Requests refused before reaching vLLM, by reason (overloaded = 429, draining = 503, unauthorized = 401, "
            "not_served = 404, too_many_sequences = 400, too_large = 413, body_timeout = 408, client_gone: no answer)",
            ["reason"],
            registry=registry,
        )
        self.readiness = Counter(
            f"{PREFIX}_readiness_probes", "Readiness probes that ran a real generation, by result", ["result"], registry=registry
        )
        self.cold_start = Gauge(
            f"{PREFIX}_cold_start_seconds", "Seconds from process start until the server accepted requests", registry=registry
        )
        self.start_phase = Gauge(
            f"{PREFIX}_start_phase_seconds",
            "Seconds from process start to the end of each start phase (download, imports, weights_loaded, engine_ready, first_generation)",
            ["phase"],
            registry=registry,
        )
        self.compile_cache = Counter(
            f"{PREFIX}_compile_cache",
            "Starts by what the kept compile cache gave: hit (reused), miss (compiled, now kept), corrupt (unusable: compiled again)",
            ["result"],
            registry=registry,
        )
        self.draining = Gauge(f"{PREFIX}_draining", "1 after SIGTERM while in-flight requests finish", registry=registry)
        for reason in REJECTION_REASONS:
            self.rejected.labels(reason)
        for result in ("ready", "not_ready"):
            self.readiness.labels(result)
        for result in COMPILE_CACHE_RESULTS:
            self.compile_cache.labels(result)
