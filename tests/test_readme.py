"""The README's two fresh-machine commands stay true to what CI runs and what ships."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _commands():
    text = (REPO / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text, flags=re.S)[:2]


def test_ci_runs_the_readme_test_command():
    main_cmd, test_cmd = _commands()
    ci = (REPO / ".ci" / "run").read_text()
    assert test_cmd.strip() in ci.splitlines()


def test_main_command_uses_shipped_files():
    main_cmd, _ = _commands()
    for path in re.findall(r"(examples/\S+|models/\S+)", main_cmd):
        assert (REPO / path).exists(), path
