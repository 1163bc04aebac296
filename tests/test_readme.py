"""The README opens with the two set-up commands, and CI runs exactly the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _commands(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_readme_opens_with_the_dashboard_and_the_test_commands():
    readme = (ROOT / "README.md").read_text()
    first, second = _commands(readme)[:2]
    assert "streamlit run app.py" in first and "demo-data" in first and "pip install -r requirements.txt" in first
    assert "pytest" in second


def test_ci_runs_exactly_the_readme_test_command():
    test_command = _commands((ROOT / "README.md").read_text())[1]
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == test_command
