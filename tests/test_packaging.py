"""The package as a cluster node gets it: the wheel holds every module and data file of the checkout, installs
with the line the Dockerfile and ``cluster/ray-cluster.yaml`` run, and runs a corpus job from there, in an
environment that cannot see the source tree (no editable-install finder, no checkout on ``sys.path``)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from support import REPO, SAMPLE

IGNORED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "out", "*.egg-info", "__pycache__", ".pytest_cache")
WHEEL_LINE = re.compile(r"pip install (?P<options>[^\n]*?)(?P<folder>\S+)/shardflow-\*\.whl")


def mapping() -> dict[str, str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]


def source_files() -> set[str]:
    """Every file below the mapped folders, named as it must stand in the wheel (sources and data alike)."""
    files = set()
    for package, folder in mapping().items():
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.add(f"{package.replace('.', '/')}/{path.relative_to(REPO / folder).as_posix()}")
    return files


def install_lines() -> dict[str, re.Match]:
    """The pip line that installs the wheel, in the Dockerfile and in the ray-cluster.yaml node setup."""
    setup = "\n".join(yaml.safe_load((REPO / "cluster" / "ray-cluster.yaml").read_text())["setup_commands"])
    found = {
        "Dockerfile": WHEEL_LINE.search((REPO / "Dockerfile").read_text()),
        "ray-cluster.yaml": WHEEL_LINE.search(setup),
    }
    assert all(found.values()), found
    return found


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A wheel built from a clean copy of the checkout (no stale build/ folder), installed by the shared line
    into a new virtual environment whose only other path is this one's site-packages, added as a plain path:
    its ``.pth`` files, the editable install's import finder among them, are not run."""
    work = tmp_path_factory.mktemp("wheel")
    shutil.copytree(REPO, work / "src", ignore=IGNORED)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"), "."],
        cwd=work / "src",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    )
    Path(site.stdout.strip(), "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    line = install_lines()["Dockerfile"]
    command = f"{python} -m pip {line.group(0).split('pip ', 1)[1].replace(line.group('folder'), str(work / 'dist'))}"
    done = subprocess.run(command, shell=True, capture_output=True, text=True, cwd=work, timeout=300)
    assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-3000:])
    return {"wheel": next((work / "dist").glob("shardflow-*.whl")), "python": python, "bin": venv / "bin", "work": work}


def isolated(command: list[str], cwd: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """``command`` with no trace of the checkout in its environment."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, **kwargs)


def test_the_wheel_holds_every_module_and_data_file_of_the_checkout(installed: dict[str, Path]) -> None:
    with zipfile.ZipFile(installed["wheel"]) as wheel:
        packed = {name for name in wheel.namelist() if not name.split("/", 1)[0].endswith(".dist-info")}
    assert packed == source_files()
    assert {"shardflow/operators/dedup/fuzzy.py", "shardflow/operators/quality_thresholds/default.yaml"} <= packed


def test_every_module_imports_from_the_installed_package(installed: dict[str, Path]) -> None:
    script = """
import importlib, json, pkgutil, shardflow
names = [m.name for m in pkgutil.walk_packages(shardflow.__path__, "shardflow.")]
files = {name: importlib.import_module(name).__file__ for name in names}
print(json.dumps({"package": shardflow.__file__, "files": files}))
"""
    done = isolated([str(installed["python"]), "-c", script], cwd=installed["work"], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    venv = str(installed["python"].parents[1])
    assert found["package"].startswith(venv)
    assert all(path.startswith(venv) for path in found["files"].values())
    modules = {
        path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for path in source_files()
        if path.endswith(".py")
    }
    assert set(found["files"]) == modules - {"shardflow"}
    assert "shardflow.operators.dedup.fuzzy" in found["files"]


def test_shardflow_run_works_from_the_installed_package(installed: dict[str, Path]) -> None:
    out = installed["work"] / "out"
    done = isolated(
        [
            str(installed["bin"] / "shardflow"),
            "run",
            str(REPO / "configs" / "sample.yaml"),
            "--set",
            f"input.paths=[{SAMPLE}]",
            "--set",
            "stages=[{op: langid}, {op: exact_dedup}, {op: fuzzy_dedup}, {op: quality}]",
            "--set",
            "index=null",
            "--set",
            f"output.path={out}",
            "--set",
            "ray.num_cpus=2",
            "--set",
            "ray.progress=false",
        ],
        cwd=installed["work"],
        timeout=600,
    )
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["read"] == counts["kept"] + counts["dropped"] + counts["quarantined"] > 0
    assert manifest["stages"][3]["name"] == "fuzzy_dedup" and manifest["stages"][2]["dropped"] > 0


def test_the_dockerfile_and_the_cluster_config_install_the_wheel_the_same_way() -> None:
    lines = install_lines()
    assert len({match.group("options") for match in lines.values()}) == 1
    dockerfile = (REPO / "Dockerfile").read_text()
    bases = re.findall(r"^ARG RAY_IMAGE=(\S+)$", dockerfile, re.M)
    assert bases and all(re.fullmatch(r"rayproject/ray:\d+\.\d+\.\d+-py311-\w+", base) for base in bases)
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    images = [
        image
        for path in (REPO / "cluster" / "kuberay").glob("*.yaml")
        for image in re.findall(r"image: (\S+)", path.read_text())
    ]
    assert images and not any(image.endswith(":latest") or ":" not in image for image in images)
    assert {image for image in images if "shardflow" in image} == {f"ghcr.io/shardflow/shardflow:{version}"}
    kuberay = yaml.safe_load((REPO / "cluster" / "kuberay" / "rayjob-corpus.yaml").read_text())
    assert bases[0].split(":")[1].startswith(kuberay["spec"]["rayClusterSpec"]["rayVersion"] + "-")
