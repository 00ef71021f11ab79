"""Reports for people: self-contained pages built from model-set manifests (no Dagster here).

``explorer_data`` turns a release set's manifest and decisions into the compact data the
per-series explorer draws; ``explorer_page`` renders that data into one offline HTML file.
"""
