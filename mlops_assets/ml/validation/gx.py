"""great-expectations itself: an ephemeral context that runs suites on dataframes, and the
failures read from its results. GX is imported only when a ``GxRunner`` is created (seconds);
``prefetch`` starts that import in a thread where a caller knows GX will run soon, so that
it overlaps reading and checking a drop (Parquet and Arrow work, which leaves the GIL)."""

from __future__ import annotations

import os
import threading
from datetime import datetime
from typing import Any, Literal

from mlops_assets.heap import import_frozen
from mlops_assets.ml.spec import DatasetSpec
from mlops_assets.ml.validation.failures import DropFailure
from mlops_assets.ml.validation.rules import Rule, concern_of

_prefetched: threading.Thread | None = None


def prefetch() -> None:
    """Import great-expectations in a background thread (once per process). A later import
    waits for it (Python's import lock), so nothing can see a half-imported module."""
    global _prefetched
    if _prefetched is None:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        _prefetched = threading.Thread(
            target=import_frozen, args=("great_expectations",), daemon=True
        )
        _prefetched.start()


class GxRunner:
    """An ephemeral GX context with a pandas data source; runs suites on dataframes.

    Args:
        docs_dir: a local folder for a GX Data Docs site of this context's validations (built by
            ``build_docs``); None for no docs.
    """

    DOCS_SITE = "mlops"

    def __init__(self, docs_dir: str | None = None) -> None:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        gx = import_frozen("great_expectations")
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self._gx = gx
        self.context = gx.get_context(mode="ephemeral")
        # GX draws a "Calculating Metrics" bar per validation (several per drop) on stderr;
        # the callers report progress themselves.
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        source = self.context.data_sources.add_pandas("mlops")
        self.batch = source.add_dataframe_asset("drop").add_batch_definition_whole_dataframe("all")
        self._n = 0
        self.docs_dir = docs_dir
        if docs_dir:
            self.context.add_data_docs_site(
                site_name=self.DOCS_SITE,
                site_config={
                    "class_name": "SiteBuilder",
                    "store_backend": {
                        "class_name": "TupleFilesystemStoreBackend",
                        "base_directory": docs_dir,
                    },
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                },
            )

    def build_docs(self) -> str | None:
        """Render the Data Docs site of every validation run so far; the index's local path."""
        if not self.docs_dir or not self._n:
            return None
        self.context.build_data_docs(site_names=[self.DOCS_SITE])
        return os.path.join(self.docs_dir, "index.html")

    def run(self, suite, frame, result_format: Literal["BASIC", "SUMMARY", "COMPLETE"] = "SUMMARY"):
        """Validate ``frame`` against ``suite``; returns GX's ``ExpectationSuiteValidationResult``."""
        self._n += 1
        suite = self.context.suites.add(
            suite.__class__(
                name=f"{suite.name}#{self._n}", expectations=[e.copy() for e in suite.expectations]
            )
        )
        vd = self.context.validation_definitions.add(
            self._gx.ValidationDefinition(name=f"v{self._n}", data=self.batch, suite=suite)
        )
        return vd.run(batch_parameters={"dataframe": frame}, result_format=result_format)


def _shown(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def gx_failures(result, observed: dict[str, Any], spec: DatasetSpec) -> list[DropFailure]:
    """The failed (or raising) expectations of a GX validation result on a drop.

    ``observed`` supplies the value of a profile column (exact, as computed); otherwise GX's
    ``observed_value`` is reported.
    """
    out = []
    for r in result.results:
        cfg = r.expectation_config
        raised = (r.exception_info or {}).get("raised_exception", False)
        if r.success and not raised:
            continue
        kw = dict(cfg.kwargs)
        col = kw.get("column")
        value = observed.get(col) if col in observed else ((r.result or {}).get("observed_value"))
        rule = Rule.GX_RAISED.value if raised else cfg.meta["rule"]
        column = (col or "").split("__")[0] or None
        severity = cfg.meta["severity"]
        bounds = f"[{kw.get('min_value')}, {kw.get('max_value')}]"
        out.append(
            DropFailure(
                rule=rule,
                column=column,
                concern=cfg.meta.get("concern") or concern_of(rule, column, spec),
                severity=severity,
                expectation=cfg.type,
                observed=_shown(value),
                expected={k: v for k, v in kw.items() if k in ("min_value", "max_value")},
                message=(
                    f"{str(col).replace('__', ' ')} = {_shown(value)} is outside {bounds} ({severity} "
                    "band)"
                    if not raised
                    else f"GX raised: {r.exception_info}"
                ),
            )
        )
    return out
