"""CI installs and tests exactly as the README says."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_install_and_test_commands():
    readme = ROOT.joinpath("README.md").read_text()
    ci = ROOT.joinpath(".ci", "run").read_text().splitlines()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    install = next(line for b in blocks for line in b.splitlines() if "pip install -e" in line)
    test = next(line for b in blocks for line in b.splitlines() if "pytest" in line)
    assert install in ci
    assert test in ci
