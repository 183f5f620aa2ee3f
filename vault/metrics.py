"""Prometheus metrics, kept in this process and written in the text exposition format (0.0.4).

Labels are a fixed vocabulary: route patterns (never a path, so never a file name, a user name
or a link secret), methods, statuses and transfer kinds. A small own registry instead of
``prometheus_client``: the process is single-threaded where metrics change (the event loop),
there are a dozen series, and its collector/registry layer and WSGI/asyncio exporters do not fit
a Tornado listener better than forty lines do.
"""

from collections import defaultdict
from dataclasses import dataclass, field

DURATION_BUCKETS = (0.05, 0.25, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0)
Labels = tuple[tuple[str, str], ...]


@dataclass
class Histogram:
    buckets: tuple[float, ...] = DURATION_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.total += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                return
        self.counts[-1] += 1


def _escape(value: str) -> str:
    """A label value as the text format wants it: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in labels] + ([extra] if extra else [])
    return "{" + ",".join(parts) + "}" if parts else ""


class Metrics:
    """Counters and histograms the HTTP layer updates; gauges are read at scrape time."""

    def __init__(self) -> None:
        self.requests: defaultdict[Labels, int] = defaultdict(int)
        self.bytes: defaultdict[Labels, int] = defaultdict(int)
        self.durations: defaultdict[Labels, Histogram] = defaultdict(Histogram)
        self.throttled = 0
        self.integrity_failures = 0
        self.send_timeouts = 0

    def request(self, route: str, method: str, status: int) -> None:
        self.requests[(("route", route), ("method", method), ("status", str(status)))] += 1
        if status == 429:
            self.throttled += 1

    def transfer(self, direction: str, nbytes: int) -> None:
        self.bytes[(("direction", direction),)] += nbytes

    def duration(self, kind: str, seconds: float) -> None:
        self.durations[(("kind", kind),)].observe(seconds)

    def render(self, gauges: dict[str, tuple[str, float]]) -> str:
        """The exposition text; ``gauges`` maps a name to (help, value) read just now."""
        out: list[str] = []

        def family(name: str, kind: str, text: str, lines: list[str]) -> None:
            out.extend([f"# HELP {name} {text}", f"# TYPE {name} {kind}", *lines])

        family(
            "vault_http_requests_total",
            "counter",
            "Requests answered, by route pattern, method and status.",
            [f"vault_http_requests_total{_labels(k)} {v}" for k, v in sorted(self.requests.items())],
        )
        family(
            "vault_transfer_bytes_total",
            "counter",
            "Body bytes of requests (in) and responses (out), as declared by Content-Length.",
            [f"vault_transfer_bytes_total{_labels(k)} {v}" for k, v in sorted(self.bytes.items())],
        )
        family(
            "vault_throttled_requests_total",
            "counter",
            "Requests answered 429.",
            [f"vault_throttled_requests_total {self.throttled}"],
        )
        family(
            "vault_integrity_failures_total",
            "counter",
            "Requests that found stored data failing its authentication.",
            [f"vault_integrity_failures_total {self.integrity_failures}"],
        )
        family(
            "vault_send_timeouts_total",
            "counter",
            "Downloads closed because the client took nothing for send_timeout seconds.",
            [f"vault_send_timeouts_total {self.send_timeouts}"],
        )
        family(
            "vault_transfer_duration_seconds",
            "histogram",
            "Upload and download durations.",
            self._histograms(),
        )
        for name, (text, value) in sorted(gauges.items()):
            family(name, "gauge", text, [f"{name} {value:g}"])
        return "\n".join(out) + "\n"

    def _histograms(self) -> list[str]:
        lines = []
        for labels, hist in sorted(self.durations.items()):
            running = 0
            for bound, count in zip((*hist.buckets, float("inf")), hist.counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                bucket = _labels(labels, 'le="' + le + '"')
                lines.append(f"vault_transfer_duration_seconds_bucket{bucket} {running}")
            lines.append(f"vault_transfer_duration_seconds_sum{_labels(labels)} {hist.total:g}")
            lines.append(f"vault_transfer_duration_seconds_count{_labels(labels)} {running}")
        return lines
