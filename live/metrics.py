"""Prometheus metrics, one registry per app so several apps can live in one process (tests)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class Metrics:
    """The Prometheus metrics of one app (listed in docs/operations.md)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge("lc_connections", "Socket.IO connections on this instance", registry=r)
        self.rooms = Gauge("lc_rooms_followed", "Rooms with members on this instance", registry=r)
        self.events_in = Counter("lc_events_in_total", "Client events received", ["event"], registry=r)
        self.events_rejected = Counter(
            "lc_events_rejected_total", "Client events refused, by error code", ["event", "code"], registry=r
        )
        self.connects_refused = Counter("lc_connects_refused_total", "Connections refused", ["code"], registry=r)
        self.publications = Counter(
            "lc_publications_total", "Room events delivered to this instance", ["type"], registry=r
        )
        self.deliveries = Counter(
            "lc_deliveries_total", "Room events sent to local clients (events x recipients)", registry=r
        )
        self.delivery_latency = Histogram(
            "lc_delivery_latency_seconds",
            "Time from publish to hand-off to local sockets, per room event",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.reloads = Counter(
            "lc_room_reloads_total", "Rooms told to reload (history could not cover a gap)", registry=r
        )
        self.bus_connected = Gauge("lc_bus_connected", "1 while the room bus subscriber is connected", registry=r)
        self.bus_outages = Gauge("lc_bus_outages", "Room bus outages since start", registry=r)

    def watch_media(self, figures: Callable[[float], Any]) -> None:
        """Export the media service's figures (``MediaService.figures``) at each scrape."""
        self.registry.register(_MediaCollector(figures))


METRICS_WINDOW_S = 10.0


class _MediaCollector(Collector):
    """Reads the media figures at scrape time: the forwarder keeps plain counters, no per-packet metric calls."""

    def __init__(self, figures: Callable[[float], Any]) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Any]:
        f = self._figures(METRICS_WINDOW_S)
        yield GaugeMetricFamily("lc_media_rooms", "Rooms with media on this instance", value=f.rooms)
        yield GaugeMetricFamily("lc_media_publishers", "Publishing connections", value=f.publishers)
        yield GaugeMetricFamily("lc_media_viewers", "Viewing connections", value=f.viewers)
        yield GaugeMetricFamily("lc_media_tracks", "Published tracks being forwarded", value=f.tracks)
        yield CounterMetricFamily("lc_media_packets_in", "RTP packets received from publishers", value=f.packets_in)
        yield CounterMetricFamily("lc_media_packets_out", "RTP packets sent to viewers", value=f.packets_out)
        yield CounterMetricFamily(
            "lc_media_keyframe_requests", "Keyframe requests (PLI) sent to publishers", value=f.keyframe_requests
        )
        delay = GaugeMetricFamily(
            "lc_media_forward_ms",
            "Forwarding delay of viewers' copies in the last 10 s: a packet's kernel arrival until the copy is sent",
            labels=["quantile"],
        )
        for quantile, value in (("0.5", f.forward_p50_ms), ("0.99", f.forward_p99_ms)):
            if value is not None:
                delay.add_metric([quantile], value)
        yield delay
