"""The lifecycle over storage, with no Dagster import: curation, model sets, batch layout."""
