"""Prometheus metrics, one registry per app so several apps can live in one process (tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
