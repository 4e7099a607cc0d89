"""Counters behind `GET /metrics`, rendered in the Prometheus text exposition format."""

from __future__ import annotations

import threading
from typing import Any


class Metrics:
    """Counters for /metrics (Prometheus text exposition format)."""

    BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, list] = {}  # route -> [bucket counts..., sum, count]
        self.completion_tokens = 0
        self.prompt_tokens = 0
        self.rejected_busy = 0

    def observe(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, status)] = self.requests.get((route, status), 0) + 1
            h = self.latency.setdefault(route, [0] * len(self.BUCKETS) + [0.0, 0])
            for i, b in enumerate(self.BUCKETS):
                if seconds <= b:
                    h[i] += 1
            h[-2] += seconds
            h[-1] += 1

    def add_tokens(self, n: int) -> None:
        with self._lock:
            self.completion_tokens += n

    def render(self, state: Any) -> str:
        """The exposition text; `state` is the app's ServerState (its status and worker pool)."""
        out = []

        def head(name, kind, help_):
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")

        with self._lock:
            head("nanochat_requests_total", "counter", "HTTP requests by route and status code.")
            for (route, status), n in sorted(self.requests.items()):
                out.append(f'nanochat_requests_total{{route="{route}",status="{status}"}} {n}')
            head("nanochat_request_duration_seconds", "histogram", "Time from request to the last byte of the response.")
            for route, h in sorted(self.latency.items()):
                for i, b in enumerate(self.BUCKETS):
                    out.append(f'nanochat_request_duration_seconds_bucket{{route="{route}",le="{b}"}} {h[i]}')
                out.append(f'nanochat_request_duration_seconds_bucket{{route="{route}",le="+Inf"}} {h[-1]}')
                out.append(f'nanochat_request_duration_seconds_sum{{route="{route}"}} {h[-2]:.6f}')
                out.append(f'nanochat_request_duration_seconds_count{{route="{route}"}} {h[-1]}')
            counters = [
                ("nanochat_completion_tokens_total", "Tokens generated.", self.completion_tokens),
                ("nanochat_prompt_tokens_total", "Prompt tokens of accepted requests.", self.prompt_tokens),
                ("nanochat_rejected_busy_total", "Requests refused with 503 because the queue was full.", self.rejected_busy),
            ]
        pool = state.pool
        gauges = [
            ("nanochat_ready", "1 when the model is loaded and serving.", 1 if state.status == "ready" else 0),
            ("nanochat_workers", "Engine workers.", len(pool.workers) if pool else 0),
            ("nanochat_workers_busy", "Engine workers generating now.", pool.busy if pool else 0),
            ("nanochat_batch_slots", "Decode batch slots over all workers.", pool.slots if pool else 0),
            ("nanochat_requests_running", "Requests in a decode batch now.", pool.running if pool else 0),
            ("nanochat_queue_waiting", "Requests waiting for a batch slot.", pool.waiting if pool else 0),
        ]
        for kind, rows in (("counter", counters), ("gauge", gauges)):
            for name, help_, value in rows:
                head(name, kind, help_)
                out.append(f"{name} {value}")
        return "\n".join(out) + "\n"
