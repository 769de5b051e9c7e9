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
