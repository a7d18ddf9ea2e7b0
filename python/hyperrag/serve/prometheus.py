"""Prometheus metrics of a serving controller (and its shared remote tier).

Nothing is counted twice: a collector reads ``controller.metrics()`` (and the
RedisKVStore's own counters) at each scrape, so what Prometheus sees is what
the controller reports. Exposed over HTTP when a port is configured:

    server = serve_metrics(controller, port=9400)   # http://127.0.0.1:9400/metrics
    ...
    server.close()

Needs prometheus_client (``pip install 'dv-hyperrag[remote]'``).
"""
from __future__ import annotations

import math


class ControllerCollector:
    """A prometheus_client collector over one controller."""

    def __init__(self, controller, prefix: str = "hyperrag"):
        self.controller = controller
        self.prefix = prefix

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        p = self.prefix
        m = self.controller.metrics()
        yield CounterMetricFamily(f"{p}_queries", "Queries served", value=m.queries)
        yield CounterMetricFamily(f"{p}_lookups", "Cache lookups (one per prefill job)", value=m.lookups)
        hits = CounterMetricFamily(f"{p}_tier_hits", "Segments reused, by the tier they were found in",
                                   labels=["tier"])
        tokens = CounterMetricFamily(f"{p}_tier_hit_tokens", "Tokens reused, by tier", labels=["tier"])
        for tier, n in sorted(m.tier_hits.items()):
            hits.add_metric([tier], n)
            tokens.add_metric([tier], m.tier_hit_tokens.get(tier, 0))
        hits.add_metric(["remote"], m.remote_hits)
        yield hits
        yield tokens
        used = GaugeMetricFamily(f"{p}_tier_used_bytes", "KV bytes resident, by tier", labels=["tier"])
        used.add_metric(["gpu"], m.gpu_used_mib * (1 << 20))
        used.add_metric(["host"], m.host_used_mib * (1 << 20))
        yield used
        evictions = CounterMetricFamily(f"{p}_evictions", "Nodes evicted, by tier", labels=["tier"])
        for tier, n in sorted(m.evictions.items()):
            evictions.add_metric([tier], n)
        yield evictions
        yield CounterMetricFamily(f"{p}_remote_hit_bytes", "KV bytes brought from the shared tier",
                                  value=m.remote_hit_bytes)
        yield CounterMetricFamily(f"{p}_remote_errors", "Shared-tier values refused or calls failed",
                                  value=m.remote_errors)
        yield CounterMetricFamily(f"{p}_store_errors", "New KV that could not be stored", value=m.store_errors)
        buckets = [("+Inf" if math.isinf(b) else repr(b), n) for b, n in m.ttft_buckets.items()]
        yield HistogramMetricFamily(f"{p}_ttft_seconds", "Time to first token", buckets=buckets,
                                    sum_value=m.ttft_sum_s)
        remote = getattr(getattr(self.controller, "transactions", None), "remote", None)
        stats = getattr(remote, "stats", None)
        if callable(stats):
            counters = CounterMetricFamily(f"{p}_remote_store", "The shared store's own counters",
                                           labels=["counter"])
            for name, value in sorted(stats().__dict__.items()):
                counters.add_metric([name], value)
            yield counters


class MetricsServer:
    """The HTTP endpoint serving one controller's metrics; ``close()`` stops it."""

    def __init__(self, controller, port: int, addr: str = "127.0.0.1", prefix: str = "hyperrag"):
        from prometheus_client import CollectorRegistry, start_http_server

        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int in [0, 65535] (0: any free port), got {port!r}")
        self.registry = CollectorRegistry()
        self.registry.register(ControllerCollector(controller, prefix))
        self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        self.port = self._server.server_port
        self.url = f"http://{addr}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_metrics(controller, port: int, addr: str = "127.0.0.1", prefix: str = "hyperrag") -> MetricsServer:
    """Expose ``controller``'s metrics at http://addr:port/metrics (port 0: any free port)."""
    return MetricsServer(controller, port, addr, prefix)


__all__ = ["ControllerCollector", "MetricsServer", "serve_metrics"]
