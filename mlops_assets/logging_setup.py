"""Where the project configures warnings and logging for its own processes (the ``mlops``
command and the code location ``dg dev`` loads).

Third-party warnings a user cannot act on are silenced here, each filter narrow: one message,
its category and the module it is attributed to. Everything else still shows. The test suite
keeps its own list (``filterwarnings`` in pyproject.toml), which fails on deprecations.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

# (message regex, category, module regex): why each is silenced.
_SILENCED: tuple[tuple[str, type[Warning], str], ...] = (
    # Our assets opt into Dagster's backfill_policy (one run per backfill), a beta parameter;
    # Dagster warns at every definition load.
    (
        r"Parameter `backfill_policy` of function `asset` is currently in beta",
        dg.BetaWarning,
        "dagster",
    ),
    # great-expectations imports pyspark, which warns that it does not yet fully support
    # pandas 3 (the Spark engine's own tests cover what we use of it).
    (r"PySpark does not yet fully support pandas", FutureWarning, "pyspark"),
)

# Loggers of libraries that print their own lines on stderr (MLflow creating its SQLite
# tables, azure-ai-ml's experimental-class notices: "azure.ai.ml" has its own stderr handler
# and does not propagate); a log file takes them while ``log_to_file`` is active.
_LIBRARY_LOGGERS = ("mlflow", "alembic", "azure", "azure.ai.ml")


def silence_third_party_warnings() -> None:
    """Ignore the warnings listed in ``_SILENCED`` in this process (idempotent)."""
    for message, category, module in _SILENCED:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


@contextmanager
def log_to_file(path: Path) -> Iterator[logging.Handler]:
    """A file handler for ``path`` (appended to), which also takes the lines of the libraries
    in ``_LIBRARY_LOGGERS`` until the block ends; closed at the end."""
    import mlflow  # noqa: F401 - MLflow sets up its loggers on import: take them over after

    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = {name: logging.getLogger(name).handlers for name in _LIBRARY_LOGGERS}
    try:
        for name in _LIBRARY_LOGGERS:
            logging.getLogger(name).handlers = [handler]
        yield handler
    finally:
        for name, handlers in saved.items():
            logging.getLogger(name).handlers = handlers
        handler.close()


def file_logger(handler: logging.Handler) -> dg.LoggerDefinition:
    """A Dagster logger that hands every event and op log of a run to ``handler`` (and
    nothing to the console): give it to a job with ``with_logger_defs({"file": ...})`` and
    run config ``{"loggers": {"file": {}}}``."""

    @dg.logger(config_schema=None, description="Dagster's events and op logs, to a log file.")
    def _file_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
        logger = logging.Logger(f"dagster.{init_context.run_id}", level=logging.DEBUG)
        logger.addHandler(handler)
        return logger

    return _file_logger
