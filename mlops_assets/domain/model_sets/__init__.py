"""The model set: its identity (``ModelSetRef``), where it lives, writing it and verified reading.

A model set is one training run's models for every series: packs of model bytes plus a manifest
(``ml.modelset``). It is referred to everywhere, from training through evaluation, registration,
promotion, serving and batch scoring, by one frozen ``ModelSetRef``; every reader checks the
manifest's sha256 against the reference before using it, and each model's sha256 before loading
it. ``layout`` says where sets and pointers live, ``io`` writes and reads them, ``release`` holds
the evaluated set with its gate outcome.
"""

from mlops_assets.domain.model_sets.bundle import bundle_folder, write_bundle
from mlops_assets.domain.model_sets.io import (
    copy_model_set,
    load_model,
    load_models,
    open_reader,
    read_manifest,
    read_manifest_bytes,
    read_ref_file,
    verify_models,
    write_model_set,
)
from mlops_assets.domain.model_sets.layout import (
    REF_FILE,
    candidate_pointer,
    latest_pointer,
    models_root,
    pointer_name,
    read_pointer,
    registered_model_name,
    release_folder,
    release_pointer,
    set_folder,
    write_pointer,
)
from mlops_assets.domain.model_sets.ref import ModelSetError, ModelSetRef, sha256
from mlops_assets.domain.model_sets.release import ReleaseRecord, read_release, write_release
from mlops_assets.domain.model_sets.sweep import sweep_unfinished_sets, unfinished_sets

__all__ = [
    "REF_FILE",
    "ModelSetError",
    "ModelSetRef",
    "ReleaseRecord",
    "bundle_folder",
    "candidate_pointer",
    "copy_model_set",
    "latest_pointer",
    "load_model",
    "load_models",
    "models_root",
    "open_reader",
    "pointer_name",
    "read_manifest",
    "read_manifest_bytes",
    "read_pointer",
    "read_ref_file",
    "read_release",
    "registered_model_name",
    "release_folder",
    "release_pointer",
    "set_folder",
    "sha256",
    "sweep_unfinished_sets",
    "unfinished_sets",
    "verify_models",
    "write_bundle",
    "write_model_set",
    "write_pointer",
    "write_release",
]
