"""serving's Prometheus metrics (``GET /metrics``): request counts and latency (filled by
``serving.middleware.RequestMetrics``), time to first token, tokens generated, adapter loads, and the
engine's queue, batch and batching counters, read at scrape time. One registry per app.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

from serving.engine import Engine, Finished


class Metrics:
    def __init__(self, engine: Engine):
        self.registry = CollectorRegistry()
        self.requests = Counter("careloop_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("careloop_request_seconds", "Request latency by route", ["route"],
                                 registry=self.registry)
        self.ttft = Histogram("careloop_time_to_first_token_seconds", "Queue + prefill time",
                              registry=self.registry)
        self.tokens = Counter("careloop_generated_tokens", "Tokens generated", registry=self.registry)
        Gauge("careloop_queue_depth", "Requests waiting for a batch slot",
              registry=self.registry).set_function(lambda: engine.stats.queued)
        Gauge("careloop_running_requests", "Requests in the running batch",
              registry=self.registry).set_function(lambda: engine.stats.running)
        Gauge("careloop_loaded_adapters", "LoRA adapters loaded",
              registry=self.registry).set_function(lambda: len(engine.adapters))
        self.adapter_loads = Counter("careloop_adapter_loads", "LoRA adapter loads by result",
                                     ["result"], registry=self.registry)
        self.registry.register(_EngineCounters(engine))

    def finished(self, result: Finished) -> None:
        self.tokens.inc(result.completion_tokens)
        if result.first_token_seconds is not None:
            self.ttft.observe(result.first_token_seconds)


class _EngineCounters:
    """The engine's own batching counters (``EngineStats``), read at scrape time."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def collect(self) -> Iterator[CounterMetricFamily]:
        stats = self.engine.stats
        for name, value, text in [
                ("batched_steps", stats.batched_steps, "Forward passes over more than one request"),
                ("mixed_adapter_steps", stats.mixed_adapter_steps, "Forward passes mixing adapters"),
                ("joined_running_batch", stats.joined_running_batch, "Requests that joined a decoding batch")]:
            yield CounterMetricFamily(f"careloop_{name}", text, value=value)
