"""vLLM version strings as users type them, and extra_args checks at the end of the list."""

from __future__ import annotations

import pytest

from msmall.backends.vllm import versions
from msmall.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "normal"),
    [("0.10", "0.10.0"), ("v0.33", "0.33.0"), ("0.10.1.post1", "0.10.1"), (" 0.9.2 ", "0.9.2")],
)
def test_normalize_version(text: str, normal: str) -> None:
    """A missing patch number is 0 (`--vllm-version 0.10` is 0.10.0, not 0.10.1)."""
    assert versions.normalize_version(text) == normal


def test_limit_mm_flag_without_a_value_at_the_end() -> None:
    """A bare --limit-mm-per-prompt as the last extra arg has no old-style value to refuse
    (vLLM's argparse reports the missing value itself)."""
    versions.check_extra_args(["--limit-mm-per-prompt"], "0.33.0")
    with pytest.raises(ConfigError, match=r"pre-0\.10 format"):
        versions.check_extra_args(["--limit-mm-per-prompt", "image=2"], "0.33.0")


def _fake_vllm(tmp_path, monkeypatch, output: str) -> None:
    """A `vllm` on PATH (outside this interpreter's bin/) whose --version prints `output`."""
    import os
    import sys

    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "vllm"
    exe.write_text(f"#!{sys.executable}\nimport sys\nsys.stdout.write({output!r})\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")


def test_installed_version_prefers_a_line_that_is_only_a_version(tmp_path, monkeypatch) -> None:
    """`vllm --version` imports vllm first, which may log INFO lines with other version numbers
    (torch's) before the answer."""
    _fake_vllm(
        tmp_path, monkeypatch,
        "INFO 12-01 10:00:00 [__init__.py:239] Automatically detected platform cuda (torch "
        "2.7.0).\n0.10.1\n",
    )  # fmt: skip
    assert versions.installed_vllm_version() == "0.10.1"


def test_installed_version_falls_back_to_the_first_number(tmp_path, monkeypatch) -> None:
    _fake_vllm(tmp_path, monkeypatch, "vllm 0.9.2 (build abc)\n")
    assert versions.installed_vllm_version() == "0.9.2"
