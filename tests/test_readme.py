"""The README's two commands are the ones CI and users run; keep them true."""

from __future__ import annotations

import re

from support import REPO


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (REPO / "README.md").read_text())


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second() -> None:
    install_and_run, run_tests = readme_commands()[:2]
    assert "pip install -e ." in install_and_run and install_and_run.endswith("shardflow run configs/sample.yaml")
    assert run_tests.endswith("python -m pytest -q")
    assert run_tests in (REPO / ".ci" / "run").read_text().splitlines()
