"""Data validation, one package for ingestion and batch scoring alike.

Modules, by concern (import from them directly; nothing here imports great-expectations,
which is loaded only where GX itself runs):

* ``rules``: the one vocabulary of rule names, what each means and which check reports it.
* ``suite``: the expectation configurations (great-expectations 1.x form) derived from a spec.
* ``masks``: the row-level configurations compiled to vectorised pyarrow/numpy row masks.
* ``rows``: ``validate_rows``, the one entry point that splits rows into kept and quarantined.
* ``profile``: a drop's exact aggregates and the reference bands they are compared with.
* ``gx``: the great-expectations runner and the failures read from its results.
* ``gate``: ``DropGate``, the drop-level checks of an ingestion run, and ``DropReport``.
* ``failures``: typed failures (``RowFailure``, ``DropFailure``) with their stored form.
"""
