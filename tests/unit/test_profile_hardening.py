"""Profiles cannot hang or exhaust msmall (issue 9, class 5): pure loading, no subprocess."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hostile_yaml import BOMB
from msmall.errors import ConfigError
from msmall.profiles import load_profile, parse_set


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_alias_bomb_fails_fast(tmp_path: Path) -> None:
    path = write(tmp_path, BOMB)
    assert len(BOMB) < 1024
    started = time.monotonic()
    with pytest.raises(ConfigError, match="more than 20000 values"):
        load_profile(str(path))
    assert time.monotonic() - started < 1.0


def test_alias_bomb_in_set_fails_fast() -> None:
    value = "[&a [x,x,x,x,x,x,x,x,x,x], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]]"
    started = time.monotonic()
    with pytest.raises(ConfigError, match="more than 20000 values"):
        parse_set([f"extra_args={value}"])
    assert time.monotonic() - started < 1.0


def test_recursive_alias_is_a_plain_error(tmp_path: Path) -> None:
    path = write(tmp_path, "name: r\nserving:\n  extra_args: &x [--a, *x]\n")
    with pytest.raises(ConfigError, match="recursive YAML alias"):
        load_profile(str(path))


def test_a_few_aliases_still_work(tmp_path: Path) -> None:
    text = (
        "name: ok\nbackend: simulator\nx: &args [--enforce-eager]\nserving:\n  extra_args: *args\n"
    )
    path = write(tmp_path, text)
    # `x` is not a profile key: the alias is fine, the unknown key is the only complaint.
    with pytest.raises(ConfigError, match="unknown key 'x'"):
        load_profile(str(path))


def test_duplicate_keys_name_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "name: d\nserving:\n  port: 8001\n  vision: false\n  port: 8002\n")
    with pytest.raises(ConfigError) as info:
        load_profile(str(path))
    assert f"{path}:5: duplicate key 'serving.port' (first on line 3)" in info.value.message


def test_deep_nesting_is_a_plain_error(tmp_path: Path) -> None:
    path = write(tmp_path, "name: n\nx: " + "[" * 20000 + "]" * 20000 + "\n")
    with pytest.raises(ConfigError):
        load_profile(str(path))


def test_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(ConfigError, match="not a regular file"):
        load_profile(str(fifo))
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_devices_are_refused(device: str) -> None:
    if not os.path.exists(device):
        pytest.skip(f"no {device}")
    with pytest.raises(ConfigError, match="not a regular file"):
        load_profile(device)


def test_huge_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "name: big\n" + "# padding\n" * 40000)
    with pytest.raises(ConfigError, match="too large"):
        load_profile(str(path))


@pytest.mark.parametrize(
    ("key", "value"),
    [("port", "true"), ("gpu_count", "yes"), ("max_num_seqs", "true"), ("min_vram_gib", "false")],
)
def test_booleans_are_not_numbers(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match="not true/false"):
        load_profile("demo", parse_set([f"{key}={value}"]))


@pytest.mark.parametrize(
    ("key", "value", "range_text"),
    [
        ("port", "99999999999999999999", "between 1 and 65535"),
        ("port", "0", "between 1 and 65535"),
        ("min_vram_gib", "1e300", "between 0 and 4096"),
        ("images_per_prompt", "100000", "between 0 and 256"),
        ("max_num_seqs", "10000000", "between 1 and 4096"),
    ],
)
def test_absurd_numbers_are_refused_with_the_range(key: str, value: str, range_text: str) -> None:
    with pytest.raises(ConfigError, match=range_text):
        load_profile("demo", parse_set([f"{key}={value}"]))
