"""Dagster assets, one module per lifecycle stage: each reads its inputs, calls the domain, reports."""
