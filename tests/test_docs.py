"""README is the contract: its test command is what CI runs, and its tables match the code."""

import re
from pathlib import Path

from tenexa.config import SETTINGS
from tenexa.errors import ErrorCode

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _block_after(marker: str) -> list[str]:
    section = README.split(marker, 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    for line in _block_after("**Run the tests**"):
        assert line.strip() in ci_lines, f"README test command {line!r} is not what .ci/run runs"


def test_every_setting_is_in_the_readme_table():
    for spec in SETTINGS.values():
        assert re.search(rf"^\| `{spec.env}` \|", README, re.M), f"{spec.env} missing from README's configuration table"


def test_every_error_code_is_documented():
    for code in ErrorCode:
        assert re.search(rf"^\| `{code.value}` \|", README, re.M), f"{code.value} missing from README's error table"
