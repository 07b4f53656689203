"""Prometheus metrics of the controller, on a registry of its own (one per controller instance)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter("stokehold_controller_events", "Inbound events handled, by type and outcome", ["type", "outcome"], registry=r)
        self.apply_latency = Histogram(
            "stokehold_controller_apply_seconds",
            "Time of one sink write (apply or delete)",
            ["sink", "action"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.sink_errors = Counter(
            "stokehold_controller_sink_errors", "Sink writes that failed, by kind (transient|permanent)", ["kind"], registry=r
        )
        self.dead_letters = Counter("stokehold_controller_dead_letters", "Events rejected to the dead-letter subject", registry=r)
        self.gave_up = Counter(
            "stokehold_controller_gave_up",
            "Inbound events terminated after their last allowed delivery, by what kept failing (dead_letter|sink|error)",
            ["reason"],
            registry=r,
        )
        self.order_rebuilds = Counter(
            "stokehold_controller_order_rebuilds",
            "State rebuilds from the stream because an event arrived after later ones of its template (a delivery lost on the way)",
            registry=r,
        )
        self.kept_objects = Gauge(
            "stokehold_controller_kept_objects",
            "Managed objects kept although the desired state has nothing for them (waiting for an explicit deployment.deleted)",
            registry=r,
        )
        self.unreadable_files = Gauge(
            "stokehold_controller_sink_unreadable_files",
            "Files of the GitOps directory the dir sink skipped at its last listing (not regular, unreadable, not YAML)",
            registry=r,
        )
        self.unsettled_templates = Gauge(
            "stokehold_controller_unsettled_templates", "Templates waiting for the sink to recover (retried with backoff)", registry=r
        )
        self.consumer_pending = Gauge(
            "stokehold_controller_consumer_pending", "Inbound events not yet delivered to the controller (consumer lag)", registry=r
        )
        self.status_publish_failures = Counter(
            "stokehold_controller_status_publish_failures", "Status events the stream did not confirm", registry=r
        )
        self.reconnects = Counter("stokehold_controller_nats_reconnects", "Reconnections to NATS", registry=r)
        self.rebuild_seconds = Gauge("stokehold_controller_rebuild_seconds", "Time of the last state rebuild from the stream", registry=r)
        self.versions = Gauge("stokehold_controller_template_versions", "Template versions in the desired state", registry=r)
        self.deployments = Gauge("stokehold_controller_deployments", "Deployments in the desired state", registry=r)
        self.leader = Gauge("stokehold_controller_leader", "1 while this instance is the leader", registry=r)
