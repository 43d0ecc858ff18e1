"""The README and `crm`'s own usage name exactly the commands `crm` runs, and the README names
every option of the recommenders' evaluation."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CRM = (ROOT / "crm").read_text()
README = (ROOT / "README.md").read_text()


def _commands_run() -> set[str]:
    """The arms of crm's final `case` (the catch-all prints the usage)."""
    dispatch = CRM[CRM.rindex('case "${1:-}" in') :]
    return set(re.findall(r"^\s+([a-z][a-z-]*)\)", dispatch, re.MULTILINE))


def test_the_readme_and_the_usage_name_every_command_crm_runs_and_no_other() -> None:
    run = _commands_run()
    assert {"up", "test", "rebuild", "evaluate-recommendations"} <= run
    assert set(re.findall(r"\./crm ([a-z][a-z-]*)", README)) == run
    usage = CRM[: CRM.index("\nset ")]
    assert set(re.findall(r"^#\s+\./crm ([a-z][a-z-]*)", usage, re.MULTILINE)) == run


def test_the_readme_names_every_option_of_evaluate_recommendations() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "recommendation_service.evaluate", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    options = set(re.findall(r"^\s+(--[a-z-]+)", shown, re.MULTILINE)) - {"--help"}
    assert {"--split", "--until", "--sweep", "--ease", "--als"} <= options
    line = README[README.index("`./crm evaluate-recommendations") :]
    line = line[: line.index("`", 1)]
    assert {option for option in options if option not in line} == set()
