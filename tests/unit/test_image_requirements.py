"""The images install the runtime set only, pinned exactly as requirements.txt.

Runtime (requirements.in -> requirements.txt) is what the code location, its runs, the remote
jobs and the serving container import; requirements-dev.txt adds the test and lint tools on
the same pins. Each image's requirement set is parsed from where it is declared: the
code-location Dockerfile's ``pip install`` lines and the Azure ML environments' conda files.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "dagster" / "Dockerfile"
CLOUD = ROOT / ".cloud" / "azureml"
# The Azure ML environments built from this repository: environment spec -> its conda file.
ENVIRONMENTS = ("serving-environment.yml", "jobs-environment.yml")
INFERENCE_BASE = "mcr.microsoft.com/azureml/minimal-ubuntu22.04-py311-cpu-inference"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """``name -> version`` of a compiled requirements file (``name==version`` lines)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, sep, version = line.partition("==")
            assert sep, f"{path.name}: {line!r} is not an exact pin"
            out[canonical(re.sub(r"\[.*\]", "", name))] = version.split(";")[0].strip()
    return out


RUNTIME = pins(ROOT / "requirements.txt")
DEV = pins(ROOT / "requirements-dev.txt")
DEV_ONLY = set(DEV) - set(RUNTIME)


def dockerfile_pip_installs(text: str) -> list[list[str]]:
    """The arguments of every ``pip install`` in the Dockerfile's RUN instructions."""
    joined = re.sub(r"\\\n", " ", text)
    installs = []
    for line in joined.splitlines():
        if not line.strip().upper().startswith("RUN"):
            continue
        for command in re.split(r"&&|;", line.strip()[3:]):
            words = shlex.split(command)
            for i in range(len(words) - 1):
                if words[i].endswith("pip") and words[i + 1] == "install":
                    installs.append(words[i + 2 :])
    return installs


def conda_pip_pins(conda: Path) -> dict[str, str]:
    spec = yaml.safe_load(conda.read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)
    out = {}
    for req in pip:
        name, sep, version = req.partition("==")
        assert sep, f"{conda.name}: {req!r} is not an exact pin"
        out[canonical(name)] = version
    return out


def test_dev_set_holds_the_runtime_set_with_the_same_pins():
    assert RUNTIME, "requirements.txt has no pins"
    differ = {n: (v, DEV.get(n)) for n, v in RUNTIME.items() if DEV.get(n) != v}
    assert not differ, f"requirements-dev.txt pins these differently or lacks them: {differ}"
    for tool in ("pytest", "ruff", "mypy", "playwright", "ipykernel", "pip-audit", "hypothesis"):
        assert tool in DEV_ONLY, f"{tool} should be a development-only pin"


def test_code_location_image_installs_only_the_runtime_file():
    installs = dockerfile_pip_installs(DOCKERFILE.read_text())
    files = [a[a.index("-r") + 1] for a in installs if "-r" in a]
    assert files == ["requirements.txt"], installs
    # Every other install is the project itself, without dependencies (they come pinned above).
    for args in installs:
        if "-r" not in args:
            assert "--no-deps" in args and args[-1] == ".", args
    copied = re.findall(r"^COPY\s+(requirements[^\s]*)", DOCKERFILE.read_text(), re.M)
    assert copied == ["requirements.txt"], copied


@pytest.mark.parametrize("env_file", ENVIRONMENTS)
def test_aml_environment_pins_are_runtime_pins(env_file):
    env = yaml.safe_load((CLOUD / env_file).read_text())
    wanted = conda_pip_pins(CLOUD / env["conda_file"])
    assert wanted, env_file
    dev_only = sorted(set(wanted) & DEV_ONLY)
    assert not dev_only, f"{env_file}: development packages in an image: {dev_only}"
    unknown = sorted(set(wanted) - set(RUNTIME))
    assert not unknown, f"{env_file}: not in requirements.txt: {unknown}"
    differ = {n: (v, RUNTIME[n]) for n, v in wanted.items() if RUNTIME[n] != v}
    assert not differ, f"{env_file}: pinned unlike requirements.txt (image, runtime): {differ}"


def test_serving_environment_is_on_the_inference_base_image():
    env = yaml.safe_load((CLOUD / "serving-environment.yml").read_text())
    assert env["image"].split(":")[0] == INFERENCE_BASE
    assert "azureml-inference-server-http" in conda_pip_pins(CLOUD / env["conda_file"])


def test_dockerfile_parser_sees_continued_and_chained_installs():
    text = "FROM x\nRUN apt-get update && pip install \\\n  --no-deps -r a.txt\nRUN python -m pip install b\n"
    assert dockerfile_pip_installs(text) == [["--no-deps", "-r", "a.txt"], ["b"]]
