"""Emulated command jobs with tiny commands: ranks, environment, statuses, failure, cancel, I/O."""

from __future__ import annotations

import json
import sys
import time

import pytest
from azure.ai.ml import Input, MpiDistribution, Output, PyTorchDistribution, command
from azure.ai.ml.entities import AmlCompute, Environment
from azure.ai.ml.exceptions import JobException

from aml_emulation.client import EmulatedMLClient
from aml_emulation.workspace import EmulatedWorkspace
from mlops_assets.jobs.common import rank_and_world

SHOWN = (
    "RANK",
    "WORLD_SIZE",
    "NODE_RANK",
    "LOCAL_RANK",
    "MASTER_PORT",
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE",
)
SHOW_ENV = (
    "import json, os; print(json.dumps({k: v for k, v in os.environ.items() "
    f"if k in {SHOWN!r} or k.startswith(('AZURE', 'MLOPS', 'X_', 'DEFAULT_', 'OPENBLAS_'))}}))"
)


@pytest.fixture
def ml(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "show.py").write_text(SHOW_ENV + "\n")
    ws = EmulatedWorkspace(
        root=tmp_path / "ws",
        computes={"cpu": AmlCompute(name="cpu", max_instances=4)},
        environments={"py": Environment(name="py", version="2", image="python")},
        env={"X_WORKSPACE": "1"},
    )
    with EmulatedMLClient(ws) as client:
        yield client


def _job(ml, name: str, cmd: str, **kw):
    kw = {"environment": "azureml:py:2", "compute": "cpu", **kw}
    return command(name=name, command=cmd, code=str(ml.workspace.root.parent / "code"), **kw)


def _env_lines(ml, name: str) -> list[dict]:
    ml.jobs.run(name).done.wait(30)
    return [json.loads(p.read_text().strip()) for p in ml.jobs.run(name).log_files]


def test_pytorch_ranks_as_azure_ml_sets_them(ml, monkeypatch):
    monkeypatch.setenv("MLOPS_RANK", "7")  # the caller's environment never leaks into a job
    job = _job(
        ml,
        "ranks",
        "python show.py",
        instance_count=2,
        distribution=PyTorchDistribution(process_count_per_instance=2),
        environment_variables={"X_JOB": "a"},
    )
    submitted = ml.create_or_update(job)
    assert submitted.status == "NotStarted" and submitted.name == "ranks"
    envs = _env_lines(ml, "ranks")
    assert ml.jobs.get("ranks").status == "Completed"
    assert [(e["RANK"], e["NODE_RANK"], e["LOCAL_RANK"]) for e in envs] == [
        ("0", "0", "0"),
        ("1", "0", "1"),
        ("2", "1", "0"),
        ("3", "1", "1"),
    ]
    assert {e["WORLD_SIZE"] for e in envs} == {"4"} and len({e["MASTER_PORT"] for e in envs}) == 1
    assert all(e["X_JOB"] == "a" and e["X_WORKSPACE"] == "1" for e in envs)
    assert all("MLOPS_RANK" not in e for e in envs)
    # our scripts read their share from what Azure ML sets
    assert [rank_and_world(e) for e in envs] == [(r, 4) for r in range(4)]
    assert ml.workspace.calls("jobs.create_or_update") == [job]


def test_a_job_runs_the_hosts_blas_settings_and_nothing_else_of_the_callers(ml, monkeypatch):
    """OpenBLAS's kernel choice set on the host (``OPENBLAS_CORETYPE``) reaches the job, as on
    a container of that host: otherwise the job may pick other kernels than the caller and the
    same fit differs in its last bits. Other variables of the caller's stay out."""
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setenv("MLOPS_RANK", "7")
    ml.create_or_update(_job(ml, "blas", "python show.py"))
    (env,) = _env_lines(ml, "blas")
    assert env["OPENBLAS_CORETYPE"] == "Haswell" and "MLOPS_RANK" not in env


def test_mpi_ranks(ml):
    ml.create_or_update(
        _job(ml, "mpi", "python show.py", instance_count=2, distribution=MpiDistribution())
    )
    envs = _env_lines(ml, "mpi")
    assert [rank_and_world(e) for e in envs] == [(0, 2), (1, 2)]


def test_one_failed_instance_fails_the_job_and_stops_the_others(ml, capsys):
    cmd = "python -c \"import os, sys, time; sys.exit(3) if os.environ['RANK'] == '1' else time.sleep(60)\""
    job = _job(ml, "fails", cmd, instance_count=2, distribution=PyTorchDistribution())
    started = time.monotonic()
    ml.create_or_update(job)
    with pytest.raises(JobException, match="exited with 3"):
        ml.jobs.stream("fails")
    assert time.monotonic() - started < 20
    assert ml.jobs.get("fails").status == "Failed"
    assert all(p.returncode is not None for p in ml.jobs.run("fails").processes)
    assert "Execution Summary" in capsys.readouterr().out


def test_cancel_stops_the_processes(ml):
    ml.create_or_update(_job(ml, "long", f"{sys.executable} -c 'import time; time.sleep(60)'"))
    deadline = time.monotonic() + 10
    while ml.jobs.get("long").status != "Running" and time.monotonic() < deadline:
        time.sleep(0.02)
    poller = ml.jobs.begin_cancel("long")
    poller.result(10)
    assert poller.done() and ml.jobs.get("long").status == "Canceled"
    assert [p.returncode for p in ml.jobs.run("long").processes] == [-15]
    assert ml.workspace.calls("jobs.begin_cancel") == ["long"]


def test_inputs_and_outputs_are_local_folders(ml, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.txt").write_text("hello")
    script = (
        "import os, pathlib, sys; src, dst = sys.argv[1:3]; "
        "pathlib.Path(dst, 'y.txt').write_text(pathlib.Path(src, 'x.txt').read_text() + sys.argv[3]); "
        "assert os.environ['AZURE_ML_OUTPUT_out'] == dst"
    )
    job = _job(
        ml,
        "io",
        f'python -c "{script}" ${{{{inputs.data}}}} ${{{{outputs.out}}}} ${{{{inputs.n}}}}',
        inputs={"data": Input(type="uri_folder", path=str(tmp_path / "data")), "n": 5},
        outputs={"out": Output(type="uri_folder")},
    )
    ml.create_or_update(job)
    ml.jobs.stream("io")
    assert ml.jobs.get("io").status == "Completed"
    out = ml.workspace.root / "jobs" / "io" / "outputs" / "out" / "y.txt"
    assert out.read_text() == "hello5"


def test_a_clusters_user_assigned_identity_is_the_jobs_default(ml):
    """Azure ML names a cluster's user-assigned identity to its jobs in
    ``DEFAULT_IDENTITY_CLIENT_ID``."""
    from azure.ai.ml.entities import IdentityConfiguration, ManagedIdentityConfiguration

    uai = ManagedIdentityConfiguration(client_id="c1", resource_id="/subscriptions/s/uai")
    ml.workspace.computes["uai"] = AmlCompute(
        name="uai",
        max_instances=1,
        identity=IdentityConfiguration(type="user_assigned", user_assigned_identities=[uai]),
    )
    ml.create_or_update(_job(ml, "who", "python show.py", compute="uai"))
    (env,) = _env_lines(ml, "who")
    assert env["DEFAULT_IDENTITY_CLIENT_ID"] == "c1"
