"""The HTTP port's index (`GET /`): what the port serves, so that someone who opens it in a browser, or
a script that reads it, finds the endpoints without the README.

The answer is JSON (`{"name", "version", "endpoints": [{"method", "path", "what"}]}`), or an HTML page when
the request's `Accept` names text/html (a browser). It lists only what this server serves: /metrics and
/dashboard only when it runs with metrics.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass

from adrank import __version__
from adrank.metrics.pages import Reply


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    what: str


PROBES = [
    Endpoint("GET", "/healthz", "the process is up (200)"),
    Endpoint("GET", "/readyz", "every model has a version that serves and the server is not draining (200, else 503)"),
]
METRICS = [
    Endpoint("GET", "/metrics", "Prometheus metrics"),
    Endpoint("GET", "/dashboard", "the live dashboard"),
]
OPEN_INFERENCE_PROTOCOL = [
    Endpoint("GET", "/v2", "KServe v2 server metadata (name, version, extensions)"),
    Endpoint("GET", "/v2/health/live", "KServe v2 liveness"),
    Endpoint("GET", "/v2/health/ready", "KServe v2 readiness"),
    Endpoint("GET", "/v2/models/{model}[/versions/{version}]", "a model's metadata: inputs, outputs, versions"),
    Endpoint("GET", "/v2/models/{model}[/versions/{version}]/ready", "a model's readiness (200, else 400)"),
    Endpoint("GET", "/v2/models/{model}[/versions/{version}]/config", "Triton's model configuration"),
    Endpoint("POST", "/v2/models/{model}[/versions/{version}]/infer", "score candidates (JSON or binary tensors)"),
    Endpoint("GET", "/v2/models/stats", "Triton's statistics of every model version: counts and durations"),
    Endpoint("GET", "/v2/models/{model}[/versions/{version}]/stats", "Triton's statistics of a model or version"),
    Endpoint("POST", "/v2/repository/index", "the models and their versions' states (admin token)"),
    Endpoint("POST", "/v2/repository/models/{model}/load", "load a model now (admin token)"),
    Endpoint("POST", "/v2/repository/models/{model}/unload", "stop serving a model (admin token)"),
]


def endpoints(metrics: bool) -> list[Endpoint]:
    """What the HTTP port serves, in the order the index shows it."""
    return [*PROBES, *(METRICS if metrics else []), *OPEN_INFERENCE_PROTOCOL]


def wants_html(accept: str) -> bool:
    """A browser names text/html in Accept; curl (*/*) and clients of JSON do not."""
    return "text/html" in accept.lower()


def index_reply(metrics: bool, accept: str) -> Reply:
    listed = endpoints(metrics)
    if not wants_html(accept):
        document = {"name": "adrank", "version": __version__, "endpoints": [asdict(e) for e in listed]}
        return Reply(200, "application/json", json.dumps(document).encode())
    rows = "\n".join(f"<tr><td>{e.method}</td><td>{link(e)}</td><td>{html.escape(e.what)}</td></tr>" for e in listed)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>adrank {html.escape(__version__)}</title>"
        f"</head><body><h1>adrank {html.escape(__version__)}</h1><table>\n"
        f"<tr><th>method</th><th>path</th><th>what</th></tr>\n{rows}\n</table></body></html>\n"
    )
    return Reply(200, "text/html; charset=utf-8", page.encode())


def link(endpoint: Endpoint) -> str:
    """A GET path without placeholders is a link; the others are shown as they are."""
    path = html.escape(endpoint.path)
    if endpoint.method == "GET" and "{" not in endpoint.path:
        return f"<a href='{path}'>{path}</a>"
    return path
