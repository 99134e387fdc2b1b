"""The server's Prometheus metrics (``GET /metrics``), in a registry of each app's own, so
two apps in one process never share counters."""

from __future__ import annotations


class ServerMetrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("duma_requests", "Requests answered, by model, route and status.",
                                ["model", "route", "status"], registry=self.registry)
        self.in_flight = Gauge("duma_requests_in_flight",
                               "Turns holding a slot: admitted and not yet finished generating.",
                               registry=self.registry)
        self.queue_depth = Gauge("duma_queue_depth", "Requests waiting for a slot.", registry=self.registry)
        self.first_token = Histogram("duma_time_to_first_token_seconds",
                                     "From the request's arrival to its first streamed text.", ["model"],
                                     buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                     registry=self.registry)
        self.handoffs = Counter("duma_slow_handoffs", "Turns the slow mind worked on.", ["model"],
                                registry=self.registry)
        self.cancellations = Counter("duma_cancellations",
                                     "Generations stopped because the client went away.", ["model"],
                                     registry=self.registry)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
