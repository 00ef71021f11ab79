"""Where batch scoring reads and writes, relative to the storage root (shared by the sensor
wiring, the asset and the script, so the names agree everywhere)::

    scoring/<ds>/inbox/...                         drops to score (CSV or Parquet)
    scoring/<ds>/predictions/<drop>@<etag>.parquet predictions of one drop version (1 instance)
    scoring/<ds>/predictions/<drop>@<etag>/part-<r>-of-<n>.parquet   (n instances)
    scoring/<ds>/predictions/<drop>@<etag>/_summary-<r>.json        per-instance counts
    scoring/<ds>/quarantine/files/<drop>@<etag>    a malformed drop, + .reason.json
    scoring/<ds>/quarantine/rows/<drop>@<etag>.parquet   quarantined rows with rule and reason

``<drop>`` is the drop's name relative to the inbox (it may contain folders, e.g. a date
sub-prefix ``2026/11/21/store-17.csv``). A drop version is ``<drop>@<etag>``: this is also the
dynamic partition key and the sensor's run key, so each version is scored exactly once.
"""

from __future__ import annotations

PARTITION_SEP = "@"


def root(dataset: str) -> str:
    return f"scoring/{dataset}/"


def inbox_prefix(dataset: str) -> str:
    return f"scoring/{dataset}/inbox/"


def drop_key(relative: str, etag: str) -> str:
    return f"{relative}{PARTITION_SEP}{etag}"


def split_key(key: str) -> tuple[str, str]:
    """``<drop>@<etag>`` -> (drop relative to the inbox, etag)."""
    relative, sep, etag = key.rpartition(PARTITION_SEP)
    if not sep or not relative or not etag:
        raise ValueError(f"{key!r} is not a drop version key '<drop>@<etag>'")
    return relative, etag


def predictions_name(dataset: str, key: str, rank: int = 0, world: int = 1) -> str:
    if world == 1:
        return f"scoring/{dataset}/predictions/{key}.parquet"
    return f"scoring/{dataset}/predictions/{key}/part-{rank:03d}-of-{world:03d}.parquet"


def summary_name(dataset: str, key: str, rank: int) -> str:
    return f"scoring/{dataset}/predictions/{key}/_summary-{rank:03d}.json"


def quarantined_file(dataset: str, key: str) -> str:
    return f"scoring/{dataset}/quarantine/files/{key}"


def quarantined_rows(dataset: str, key: str) -> str:
    return f"scoring/{dataset}/quarantine/rows/{key}.parquet"
