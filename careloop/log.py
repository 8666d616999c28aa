"""Structured logging: one line per event, ``key=value`` text or JSON (CARELOOP_LOG_JSON).

Policy: user-written text (prompts, answers, comments) is never logged at INFO or above;
log ids, sizes and timings instead.
"""

from __future__ import annotations

import logging
import sys

import structlog

_SHARED_PROCESSORS = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure_logging(level: str = "INFO", json: bool = False) -> None:
    """Route structlog and stdlib logging (uvicorn, celery, alembic) through one formatter on stderr."""
    renderer = (
        structlog.processors.JSONRenderer()
        if json
        # repr()-quoted values keep multi-line text (tracebacks) on one line.
        else structlog.processors.KeyValueRenderer(
            key_order=["timestamp", "level", "logger", "event"], drop_missing=True
        )
    )
    structlog.configure(
        processors=[*_SHARED_PROCESSORS, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(line_formatter(renderer))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for chatty in ("alembic", "httpx", "httpx2", "httpcore", "urllib3", "absl"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))


def ensure_logging(level: str = "INFO", json: bool = False) -> None:
    """Configure logging unless an entry point (the CLI, a worker) already did."""
    if not structlog.is_configured():
        configure_logging(level, json)


def line_formatter(renderer=None) -> logging.Formatter:  # noqa: ANN001 - a structlog renderer
    """One ``key=value`` line per event (or ``renderer``'s format), for any logging handler."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED_PROCESSORS,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer or structlog.processors.KeyValueRenderer(
                key_order=["timestamp", "level", "logger", "event"], drop_missing=True),
        ],
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
