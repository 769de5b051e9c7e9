"""Docs that cannot drift: docs/cli.md is the CLI's own --help, and the README knows every profile."""

from __future__ import annotations

import os
import subprocess

from conftest import REPO_ROOT, msmall_cmd
from msmall.profiles import profile_names

COMMANDS = [
    [], ["serve"], ["doctor"], ["health"], ["ps"], ["logs"], ["stop"], ["simulate"],
    ["export"], ["bench"], ["profiles"], ["profiles", "list"], ["profiles", "show"],
    ["profiles", "validate"],
]  # fmt: skip
CLI_MD = REPO_ROOT / "docs" / "cli.md"


def render_cli_md() -> str:
    env = {**os.environ, "COLUMNS": "100", "TERM": "dumb"}
    parts = [
        "# msmall command reference\n\n",
        "Generated from `msmall ... --help`; `MSMALL_UPDATE_GOLDEN=1 pytest tests/e2e/test_docs.py` "
        "rewrites it.\n",
    ]
    for cmd in COMMANDS:
        out = subprocess.run(
            msmall_cmd(*cmd, "--help"), capture_output=True, text=True, env=env, check=True
        ).stdout
        title = " ".join(["msmall", *cmd])
        parts.append(f"\n## `{title}`\n\n```text\n{out.rstrip()}\n```\n")
    return "".join(parts)


def test_cli_reference_matches_the_cli() -> None:
    text = render_cli_md()
    if os.environ.get("MSMALL_UPDATE_GOLDEN") == "1":
        CLI_MD.write_text(text)
    assert CLI_MD.read_text() == text, (
        "docs/cli.md is stale: MSMALL_UPDATE_GOLDEN=1 pytest tests/e2e/test_docs.py"
    )


def test_readme_lists_every_shipped_profile() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    for name in profile_names():
        assert f"`{name}`" in readme, f"README's profile table lacks {name}"


def test_readme_first_command_is_the_demo() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```sh\n")[1:3]]
    assert "msmall serve --profile demo --check" in blocks[0]
    assert "pytest" in blocks[1]
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    command = next(line for line in blocks[1].splitlines() if "python -m pytest" in line)
    args = command.split("python -m pytest", 1)[1].split()
    ci_command = next(
        line for line in ci.splitlines() if line.strip().startswith("python -m pytest")
    )
    assert ci_command.split("python -m pytest", 1)[1].split() == args, "CI runs another command"
    # The command runs the whole suite: no path, -k or -m narrows it to a part; only output
    # and the xdist workers are chosen.
    assert args == ["-q", "-n", "4", "--dist", "loadgroup"], command
