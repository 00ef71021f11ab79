"""``PipesAzureMLClient`` with an overall timeout and retried status reads.

The class is made (and ``dagster_azure`` imported) on first use, so loading the code location
does not import the Azure ML SDK.
"""

from __future__ import annotations

import functools
import time


def _make_timed_client():
    from dagster_azure.pipes import PipesAzureMLClient

    class _Timed(PipesAzureMLClient):
        """``PipesAzureMLClient`` with an overall timeout and retried status reads."""

        timeout_s: float = 3600.0
        status_retries: int = 5

        def _status(self, job: str) -> str:
            for i in range(self.status_retries + 1):
                try:
                    return self.client.jobs.get(job).status
                except Exception:
                    if i == self.status_retries:
                        raise
                    time.sleep(min(2**i, 30))
            raise AssertionError("unreachable")

        def _poll_til_success(self, context, job_name: str) -> None:
            from dagster._core.errors import DagsterPipesExecutionError

            deadline = time.monotonic() + self.timeout_s
            last = None
            while True:
                status = self._status(job_name)
                if status != last:
                    context.log.info(f"[pipes] Azure ML job {job_name}: {status}")
                last = status
                if status == "Completed":
                    return
                if status in {"Canceled", "Failed"}:
                    raise DagsterPipesExecutionError(f"Azure ML job {job_name}: {status}")
                if time.monotonic() > deadline:
                    context.log.error(f"Azure ML job {job_name} exceeded {self.timeout_s}s")
                    self.client.jobs.begin_cancel(job_name)
                    raise DagsterPipesExecutionError(
                        f"Azure ML job {job_name} did not finish within {self.timeout_s:.0f}s "
                        f"(last status {status}); cancelled"
                    )
                time.sleep(self.poll_interval_seconds)

        def _poll_til_terminating(self, job_name: str) -> None:
            """Called only once an interrupted run has cancelled its job: wait until the job
            stops, then interrupt the step. dagster-azure returns a completed invocation here,
            so the step went on with whatever the cancelled job had written, and the run with
            its next steps (seen with Ctrl-C in ``mlops demo-azure``)."""
            from dagster._core.errors import DagsterExecutionInterruptedError

            super()._poll_til_terminating(job_name)
            raise DagsterExecutionInterruptedError(f"Azure ML job {job_name} cancelled")

    return _Timed


def TimedAzureMLClient(**kwargs):
    """A ``PipesAzureMLClient`` with an overall timeout; the class is made (and dagster_azure
    imported) on first use."""
    return _timed_client_class()(**kwargs)


_timed_client_class = functools.cache(_make_timed_client)
