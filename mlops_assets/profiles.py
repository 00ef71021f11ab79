"""Environment profiles: which implementation of each outside system a deployment uses.

``local`` (default) runs everything on this machine under one project home folder. ``dev`` and
``prod`` use Azure; their settings come from environment variables through ``dg.EnvVar``, which
Dagster resolves when a run starts, so nothing here reads the environment at import time.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from resources.storage import AzureBlobStorage, LocalStorage, Storage
from resources.training import (
    LocalTrainingEngine,
    SparkTrainingEngine,
    TrainingEngine,
    local_spark,
)

PROFILES = ("local", "dev", "prod")
REPO_ROOT = Path(__file__).resolve().parent.parent


def project_home() -> Path:
    """``MLOPS_HOME``, or ``.mlops`` in the repository (git-ignored)."""
    return Path(os.environ.get("MLOPS_HOME") or REPO_ROOT / ".mlops").resolve()


def current_profile() -> str:
    profile = os.environ.get("MLOPS_PROFILE", "local")
    if profile not in PROFILES:
        raise ValueError(f"MLOPS_PROFILE={profile!r} is not one of {PROFILES}")
    return profile


def storage_for(profile: str, home: Path) -> Storage:
    if profile == "local":
        return LocalStorage(root=str(home / "storage"))
    return AzureBlobStorage(
        account_url=dg.EnvVar("MLOPS_STORAGE_ACCOUNT_URL"),
        container=dg.EnvVar("MLOPS_STORAGE_CONTAINER"),
    )


def training_engine(name: str) -> TrainingEngine:
    """``MLOPS_TRAINING_ENGINE``: ``local`` (process pool, default) or ``spark``."""
    if name == "local":
        return LocalTrainingEngine()
    if name == "spark":
        return SparkTrainingEngine(pyspark=local_spark())
    raise ValueError(f"MLOPS_TRAINING_ENGINE={name!r} is not one of ('local', 'spark')")


def resources_for(profile: str, home: Path) -> dict[str, dg.ConfigurableResource]:
    """Every resource the code location needs, for one profile."""
    return {
        "storage": storage_for(profile, home),
        "training": training_engine(os.environ.get("MLOPS_TRAINING_ENGINE", "local")),
    }


def ensure_dagster_home(home: Path) -> Path:
    """The Dagster instance folder under the project home, with a local ``dagster.yaml``."""
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or home / "dagster")
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return dagster_home
