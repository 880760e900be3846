"""The HTTP server settings of the product's API, one definition for client_infer.py and serving/kserve_proxy.py."""

from __future__ import annotations

import uvicorn

from serving.timeouts import HeadDeadline


def server_config(app, host: str, port: int) -> uvicorn.Config:
    """uvicorn with its httptools protocol (a C parser) wrapped in HeadDeadline (a connection that sends no
    complete request head within 10 s is closed: slowloris), on uvloop; no access log (a log line per request
    cost more than the proxying), no X-Forwarded-* handling (nothing in front sets them)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=HeadDeadline,
        loop="uvloop",
        timeout_graceful_shutdown=10,
        log_config=None,  # uvicorn's lines go through this process's logging format (with timestamps)
        access_log=False,
        proxy_headers=False,
        server_header=False,
    )
