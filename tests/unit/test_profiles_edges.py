"""Profile loading at its edges: each limit at the value that passes and the first that does not,
the exact error line a user reads (file:line and wording), and the defaults `profiles show`
prints. In-process; the files are real files in tmp_path.

The limits pinned here are the profile schema's own (msmall/profiles.py: Hardware, Serving,
MAX_PROFILE_BYTES, MAX_PROFILE_NODES), each with its error message, because a user who hits
one reads that message and nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from msmall.cli.app import app
from msmall.errors import ConfigError
from msmall.profiles import load_profile, parse_set, profile_to_dict

FIX_SCHEMA = "See `msmall profiles show 4090-q4` for a valid profile."
FIX_SYNTAX = "Fix the YAML syntax (indentation, quotes, ':' after each key)."


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def refused(path: Path | str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_profile(str(path))
    assert info.value.exit_code == 2
    assert "\n" not in info.value.message
    return info.value


# ---------------------------------------------------------------------------------------------
# Numeric bounds: the last accepted value loads as written, one step past it is refused with the
# range and the line of the key.

BOUNDS = [
    # (section, key, last accepted, first refused, range as the message states it)
    ("hardware", "gpu_count", "64", "65", "between 0 and 64"),
    ("hardware", "gpu_count", "0", "-1", "between 0 and 64"),
    ("hardware", "min_vram_gib", "4096", "4096.5", "between 0 and 4096"),
    ("hardware", "min_ram_gib", "65536", "65537", "between 0 and 65536"),
    ("hardware", "min_disk_gib", "1048576", "1048577", "between 0 and 1048576"),
    ("serving", "data_parallel_size", "64", "65", "between 1 and 64"),
    ("serving", "max_num_seqs", "4096", "4097", "between 1 and 4096"),
    ("serving", "max_num_seqs", "1", "0", "between 1 and 4096"),
    ("serving", "ollama_num_parallel", "64", "65", "between 1 and 64"),
    ("serving", "images_per_prompt", "256", "257", "between 0 and 256"),
    ("serving", "port", "65535", "65536", "between 1 and 65535"),
    ("serving", "port", "1", "0", "between 1 and 65535"),
]


@pytest.mark.parametrize(("section", "key", "ok", "bad", "range_text"), BOUNDS)
def test_each_bound_accepts_its_limit_and_refuses_the_next_value(
    tmp_path: Path, section: str, key: str, ok: str, bad: str, range_text: str
) -> None:
    good = write(tmp_path, "good.yaml", f"name: edge\n{section}:\n  {key}: {ok}\n")
    prof = load_profile(str(good))
    assert getattr(getattr(prof, section), key) == json.loads(ok)

    path = write(tmp_path, "bad.yaml", f"name: edge\n{section}:\n  {key}: {bad}\n")
    exc = refused(path)
    assert (
        exc.message == f"{path}:3: '{section}.{key}' must be {range_text} (got {json.loads(bad)!r})"
    )
    assert exc.fix == FIX_SCHEMA


def test_max_model_len_accepts_256_and_refuses_255(tmp_path: Path) -> None:
    """256 tokens is the schema's floor; 131,072 is Mistral Small 3.1's trained context
    (FACTS.md)."""
    low = write(tmp_path, "a.yaml", "serving:\n  max_model_len: 256\n")
    assert load_profile(str(low)).serving.max_model_len == 256
    top = write(tmp_path, "b.yaml", "serving:\n  max_model_len: 131072\n")
    assert load_profile(str(top)).serving.max_model_len == 131072

    path = write(tmp_path, "c.yaml", "name: short\nserving:\n  max_model_len: 255\n")
    exc = refused(path)
    assert exc.message == (
        f"{path}:3: 'serving.max_model_len' must be between 256 and 131072 "
        "(the model's trained context; got 255)"
    )
    # The same floor through --set, where no line exists.
    with pytest.raises(ConfigError) as info:
        load_profile("4090-q4", parse_set(["max_model_len=255"]))
    assert info.value.message.endswith(
        "'serving.max_model_len' must be between 256 and 131072 (the model's trained context; "
        "got 255)"
    )
    assert load_profile("4090-q4", parse_set(["max_model_len=256"])).serving.max_model_len == 256


def test_two_bad_values_name_the_first_and_count_the_rest(tmp_path: Path) -> None:
    path = write(tmp_path, "two.yaml", "name: t\nserving:\n  max_num_seqs: 0\n  port: 0\n")
    assert refused(path).message == (
        f"{path}:3: 'serving.max_num_seqs' must be between 1 and 4096 (got 0) (and 1 more)"
    )
    path = write(
        tmp_path, "three.yaml", "serving:\n  max_num_seqs: 0\n  port: 0\n  images_per_prompt: -1\n"
    )
    assert refused(path).message == (
        f"{path}:2: 'serving.max_num_seqs' must be between 1 and 4096 (got 0) (and 2 more)"
    )


def test_a_bad_literal_quotes_the_value_and_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "lit.yaml", "name: l\nmodel:\n  weights: int3\n")
    message = refused(path).message
    assert message.startswith(f"{path}:3: 'model.weights' input should be ")
    assert message.endswith(" (got 'int3')")


# ---------------------------------------------------------------------------------------------
# Defaults a user sees in `msmall profiles show --json` for keys the file leaves out.


def test_hardware_defaults_are_printed_as_zero_requirements(tmp_path: Path) -> None:
    path = write(tmp_path, "bare.yaml", "name: bare\n")
    expected = {
        "gpu_count": 1,
        "min_vram_gib": 0.0,
        "min_cuda": None,
        "min_ram_gib": 0.0,
        "min_disk_gib": 0.0,
        "gpu_ids": None,
    }
    assert profile_to_dict(load_profile(str(path)))["hardware"] == expected
    result = CliRunner().invoke(app, ["profiles", "show", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["hardware"] == expected


def test_profiles_list_shows_no_memory_floor_for_a_profile_without_one() -> None:
    from msmall import paths

    folder = paths.user_profiles_dir()
    folder.mkdir(parents=True)
    write(folder, "zz-bare.yaml", "description: Mine. Nothing else\n")
    result = CliRunner().invoke(app, ["profiles", "list"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("zz-bare"))
    assert "1 GPU x 0 GiB" in row


# ---------------------------------------------------------------------------------------------
# The size and node limits, at equality.


def _padded(size: int) -> str:
    head = "name: big\nbackend: simulator\n"
    pad = size - len(head) - 1
    return head + "#" * pad + "\n"


def test_a_file_of_exactly_256_kib_loads_and_one_byte_more_is_refused(tmp_path: Path) -> None:
    limit = 256 * 1024
    ok = write(tmp_path, "ok.yaml", _padded(limit))
    assert ok.stat().st_size == limit
    assert load_profile(str(ok)).name == "big"

    big = write(tmp_path, "big.yaml", _padded(limit + 1))
    exc = refused(big)
    assert exc.message == f"{big} is {limit + 1} bytes: too large for a profile (at most 256 KiB)"


def _aliased_args(count: int) -> str:
    # Nodes: the root mapping, `serving` and its mapping, `extra_args` and its sequence (5),
    # plus one per item; an alias counts as the node it repeats.
    items = ", ".join(["&f --x"] + ["*f"] * (count - 1))
    return f"serving:\n  extra_args: [{items}]\n"


def test_20000_yaml_nodes_load_and_20001_are_refused(tmp_path: Path) -> None:
    ok = write(tmp_path, "ok.yaml", _aliased_args(20_000 - 5))
    assert len(load_profile(str(ok)).serving.extra_args) == 19_995

    over = write(tmp_path, "over.yaml", _aliased_args(20_000 - 4))
    exc = refused(over)
    assert exc.message == (
        f"{over}: more than 20000 values (each use of a YAML alias counts its whole value)"
    )
    assert exc.fix == "A profile needs a few dozen settings; remove the repeated aliases or lists."


def test_merge_keys_may_repeat_and_other_keys_may_not(tmp_path: Path) -> None:
    # `<<` is YAML's merge key: two of them in one mapping are legal YAML, not a duplicate.
    text = (
        "name: m\nbackend: simulator\n"
        "serving:\n  env:\n    <<: {A: '1'}\n    <<: {B: '2'}\n    C: '3'\n"
    )
    prof = load_profile(str(write(tmp_path, "merge.yaml", text)))
    assert prof.serving.env == {"A": "1", "B": "2", "C": "3"}


# ---------------------------------------------------------------------------------------------
# Malformed YAML: the line of the problem, PyYAML's words, and where an unclosed construct began.


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        (
            "name: m\nserving:\n  port: 8000\n   vision: false\n",
            4,
            "mapping values are not allowed here",
        ),
        (
            "name: m\nserving:\n  extra_args: [--a, --b\n  port: 8000\n",
            4,
            "expected ',' or ']', but got ':' (while parsing a flow sequence started on line 3)",
        ),
        (
            'name: q\ndescription: "never closed\nserving:\n  port: 8000\n',
            5,
            "found unexpected end of stream (while scanning a quoted scalar started on line 2)",
        ),
        ("name: t\nserving:\n\tport: 1\n", 3, "found character '\\t' that cannot start any token"),
    ],
)
def test_malformed_yaml_names_the_line_and_the_problem(
    tmp_path: Path, text: str, line: int, problem: str
) -> None:
    path = write(tmp_path, "bad.yaml", text)
    exc = refused(path)
    assert exc.message == f"{path}:{line}: malformed YAML: {problem}"
    assert exc.fix == FIX_SYNTAX


# ---------------------------------------------------------------------------------------------
# References and --set.


def test_a_reference_starting_with_a_dot_is_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, ".mine", "name: hidden\nbackend: simulator\n")
    monkeypatch.chdir(tmp_path)
    assert load_profile(".mine").name == "hidden"


def test_a_bare_yml_name_is_a_file_in_the_working_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "local.yml", "backend: simulator\n")
    monkeypatch.chdir(tmp_path)
    assert load_profile("local.yml").name == "local"


@pytest.mark.parametrize("section", ["hardware", "model", "serving"])
def test_set_refuses_a_whole_section(section: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_set([f"{section}=1"])
    assert info.value.message == f"--set: unknown setting '{section}'."


def test_an_edited_profile_is_read_again(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "serving:\n  port: 8001\n")
    assert load_profile(str(path)).serving.port == 8001
    path.write_text("serving:\n  port: 8002\n  vision: false\n", encoding="utf-8")
    prof = load_profile(str(path))
    assert (prof.serving.port, prof.serving.vision) == (8002, False)


def test_set_overrides_do_not_stick_to_the_next_load(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "serving:\n  port: 8001\n")
    assert load_profile(str(path), parse_set(["serving.env.A=1"])).serving.env == {"A": "1"}
    again = load_profile(str(path))
    assert (again.serving.env, again.source) == ({}, str(path))


def test_a_bad_inherited_value_is_blamed_on_the_file_and_line_that_set_it(tmp_path: Path) -> None:
    """`extends`: the value comes from the parent, so the error must send the user there (it
    named the child, without a line, where the key does not appear)."""
    parent = write(tmp_path, "parent.yaml", "name: parent\nserving:\n  port: 0\n")
    child = write(tmp_path, "child.yaml", "extends: ./parent.yaml\nserving:\n  host: 127.0.0.1\n")
    exc = refused(child)
    assert exc.message == f"{parent}:3: 'serving.port' must be between 1 and 65535 (got 0)"

    # The child's own value wins, and so does its line.
    fixed = write(
        tmp_path,
        "fixed.yaml",
        "extends: ./parent.yaml\nserving:\n  host: 127.0.0.1\n  port: 70000\n",
    )
    exc = refused(fixed)
    assert exc.message == f"{fixed}:4: 'serving.port' must be between 1 and 65535 (got 70000)"

    # Two levels up: the grandparent's line.
    grandchild = write(tmp_path, "grandchild.yaml", "extends: ./child.yaml\n")
    assert refused(grandchild).message.startswith(f"{parent}:3: 'serving.port'")


def test_set_drops_the_line_of_the_value_it_replaces_only(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "name: p\nserving:\n  port: 0\n  max_model_len: 16384\n")
    # The file's bad port keeps its line when --set changes another key.
    with pytest.raises(ConfigError) as info:
        load_profile(str(path), parse_set(["max_model_len=8192"]))
    assert info.value.message == f"{path}:3: 'serving.port' must be between 1 and 65535 (got 0)"
    # A bad value given by --set has no file line: the source says "(with --set)".
    with pytest.raises(ConfigError) as info:
        load_profile(str(path), parse_set(["port=70000"]))
    assert info.value.message == (
        f"{path} (with --set): 'serving.port' must be between 1 and 65535 (got 70000)"
    )
