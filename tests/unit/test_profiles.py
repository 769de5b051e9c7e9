"""Profiles: validation, the three places they come from, `extends` and `--set`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from msmall import paths
from msmall.errors import ConfigError
from msmall.profiles import (
    Profile,
    load_all,
    load_profile,
    parse_set,
    profile_names,
    profile_to_dict,
    validate_file,
)

SHIPPED = sorted(p.stem for p in paths.builtin_profiles_dir().glob("*.yaml"))


@pytest.fixture
def user_dir() -> Path:
    folder = paths.user_profiles_dir()
    folder.mkdir(parents=True)
    return folder


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# Shipped profiles


def test_the_shipped_profiles_are_the_documented_ones() -> None:
    assert SHIPPED == [
        "2x4090-bf16-vision",
        "2x4090-fp8-vision",
        "2x4090-fp8-vision-3.2",
        "4090-q4",
        "4090-q4-3.2",
        "demo",
        "h100-bf16-vision",
        "h100-bf16-vision-3.2",
    ]
    assert profile_names() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_loads_and_is_named_after_its_file(name: str) -> None:
    prof = load_profile(name)
    assert prof.name == name
    assert prof.description
    assert Path(prof.source) == paths.builtin_profiles_dir() / f"{name}.yaml"
    # The context is always set: vLLM's default (131072) does not fit a 24-48 GB card.
    assert isinstance(prof.serving.max_model_len, int) and prof.serving.max_model_len <= 65536
    assert prof.serving.host == "127.0.0.1"


@pytest.mark.parametrize("name", SHIPPED)
def test_hf_format_matches_the_repo_owner(name: str) -> None:
    # Only mistralai's own repo ships consolidated.safetensors + params.json + tekken.json.
    model = load_profile(name).model
    assert (model.hf_format == "mistral") is model.hf_repo.startswith("mistralai/")


def test_bf16_on_two_4090s_inherits_the_fp8_profile_but_its_own_model() -> None:
    fp8 = load_profile("2x4090-fp8-vision")
    bf16 = load_profile("2x4090-bf16-vision")
    assert bf16.extends == "2x4090-fp8-vision"
    assert bf16.serving == fp8.serving
    assert bf16.serving.env == {"NCCL_P2P_DISABLE": "1"}
    assert bf16.model.hf_repo == "mistralai/Mistral-Small-3.1-24B-Instruct-2503"
    assert (bf16.model.hf_format, bf16.model.weights) == ("mistral", "bf16")
    # Deep merge: one hardware key overridden, the others inherited.
    assert bf16.hardware.min_disk_gib == 60
    assert bf16.hardware.gpu_count == fp8.hardware.gpu_count == 2
    assert bf16.hardware.min_cuda == fp8.hardware.min_cuda
    # Descriptions are never inherited.
    assert bf16.description != fp8.description


# ---------------------------------------------------------------------------------------------
# Where profiles come from


def test_user_profiles_join_the_list_and_shadow_shipped_ones(user_dir: Path) -> None:
    write(user_dir, "mine.yaml", "extends: 4090-q4\nserving:\n  max_model_len: 8192\n")
    write(user_dir, "4090-q4.yaml", "backend: vllm\ndescription: my own\n")
    assert profile_names() == sorted([*SHIPPED, "mine"])
    shadow = load_profile("4090-q4")
    assert shadow.description == "my own"
    assert shadow.source == str(user_dir / "4090-q4.yaml")
    mine = load_profile("mine")
    # `mine` extends the user's 4090-q4 (user profiles shadow shipped ones everywhere).
    assert mine.backend == "vllm"
    assert mine.serving.max_model_len == 8192


def test_user_profile_extends_a_shipped_one(user_dir: Path) -> None:
    write(
        user_dir,
        "long-4090.yaml",
        "description: 4090, longer context\nextends: 4090-q4\nserving:\n  max_model_len: 49152\n",
    )
    base, prof = load_profile("4090-q4"), load_profile("long-4090")
    assert prof.name == "long-4090"
    assert prof.description == "4090, longer context"
    assert prof.serving.max_model_len == 49152
    assert prof.model == base.model and prof.hardware == base.hardware
    assert prof.serving.model_copy(update={"max_model_len": 32768}) == base.serving


def test_user_profile_named_like_a_shipped_one_can_extend_it(user_dir: Path) -> None:
    # Tweaking a shipped profile under its own name must not be a cycle onto itself.
    write(user_dir, "4090-q4.yaml", "extends: 4090-q4\nserving:\n  images_per_prompt: 2\n")
    prof = load_profile("4090-q4")
    assert prof.serving.images_per_prompt == 2
    assert prof.model.weights == "w4a16"
    assert prof.source == str(user_dir / "4090-q4.yaml")


def test_extends_chain_of_three(user_dir: Path) -> None:
    write(user_dir, "a.yaml", "extends: b\nserving:\n  max_num_seqs: 2\n")
    write(user_dir, "b.yaml", "extends: h100-bf16-vision\nserving:\n  max_num_seqs: 4\n  tools: false\n")  # fmt: skip
    prof = load_profile("a")
    assert prof.name == "a"
    assert prof.serving.max_num_seqs == 2  # a wins
    assert prof.serving.tools is False  # from b
    assert prof.serving.images_per_prompt == 8  # from h100-bf16-vision
    assert prof.hardware.min_vram_gib == 79


def test_extends_cycle_is_refused(user_dir: Path) -> None:
    write(user_dir, "a.yaml", "extends: b\n")
    write(user_dir, "b.yaml", "extends: c\n")
    write(user_dir, "c.yaml", "extends: a\n")
    with pytest.raises(ConfigError, match="makes a cycle") as info:
        load_profile("a")
    chain = info.value.message.split("makes a cycle: ")[1].split(" -> ")
    assert [Path(p).name for p in chain] == ["a.yaml", "b.yaml", "c.yaml", "a.yaml"]


def test_extends_itself_by_path_is_a_cycle(tmp_path: Path) -> None:
    path = write(tmp_path, "self.yaml", "extends: ./self.yaml\n")
    with pytest.raises(ConfigError, match="makes a cycle"):
        load_profile(str(path))


def test_extends_path_is_relative_to_the_extending_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "profiles"
    folder.mkdir()
    write(folder, "base.yaml", "backend: vllm\nserving:\n  max_model_len: 12288\n")
    child = write(folder, "child.yaml", "extends: ./base.yaml\n")
    # A decoy with the same name in the working directory must not be picked up.
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    write(workdir, "base.yaml", "backend: ollama\n")
    monkeypatch.chdir(workdir)
    prof = load_profile(str(child))
    assert (prof.backend, prof.serving.max_model_len) == ("vllm", 12288)


def test_extends_unknown_names_the_file_and_the_closest_match(tmp_path: Path) -> None:
    path = write(tmp_path, "child.yaml", "extends: h100-bf16\n")
    with pytest.raises(ConfigError) as info:
        load_profile(str(path))
    assert info.value.message.startswith(f"{path}: extends: unknown profile 'h100-bf16'")
    assert "Did you mean 'h100-bf16-vision'?" in (info.value.fix or "")


def test_explicit_path_and_name_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "file.yaml", "backend: docker\n")
    write(tmp_path, "named.yml", "name: pretty\nbackend: ollama\n")
    monkeypatch.chdir(tmp_path)
    assert load_profile("./file.yaml").name == "file"
    assert load_profile("file.yaml").backend == "docker"
    assert load_profile("named.yml").name == "pretty"
    assert validate_file("file.yaml").name == "file"


def test_unknown_profile_lists_known_ones_and_the_closest() -> None:
    with pytest.raises(ConfigError) as info:
        load_profile("4090-q8")
    assert "unknown profile '4090-q8'" in info.value.message
    for name in SHIPPED:
        assert name in info.value.message
    assert "Did you mean '4090-q4'?" in (info.value.fix or "")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="profile file not found"):
        load_profile(str(tmp_path / "nope.yaml"))


def test_a_broken_user_profile_does_not_hide_the_others(user_dir: Path) -> None:
    write(user_dir, "broken.yaml", "serving:\n  tensor_parallel_size: 3\n")
    loaded = load_all()
    errors = [p for p in loaded if isinstance(p, ConfigError)]
    assert len(errors) == 1 and "broken.yaml:2" in errors[0].message
    assert sorted(p.name for p in loaded if isinstance(p, Profile)) == SHIPPED


# ---------------------------------------------------------------------------------------------
# Validation details


def test_unknown_key_names_the_key_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "backend: vllm\nserving:\n  tools: true\n  tool_parser: x\n")
    with pytest.raises(ConfigError) as info:
        load_profile(str(path))
    assert info.value.message == f"{path}:4: unknown key 'serving.tool_parser'"


def test_numbers_in_string_settings_are_taken_as_strings(tmp_path: Path) -> None:
    # YAML reads these as numbers; users mean strings (an env value, a flag's argument).
    path = write(
        tmp_path,
        "p.yaml",
        "serving:\n  env:\n    NCCL_P2P_DISABLE: 1\n"
        "  extra_args: [--max-num-batched-tokens, 8192]\n  served_model_name: 2503\n",
    )
    sv = load_profile(str(path)).serving
    assert sv.env == {"NCCL_P2P_DISABLE": "1"}
    assert sv.extra_args == ["--max-num-batched-tokens", "8192"]
    assert sv.served_model_name == "2503"


def test_date_like_values_stay_strings(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "description: 2025-03-17\nserving:\n  served_model_name: 2025-13-45\n")  # fmt: skip
    prof = load_profile(str(path))
    assert prof.description == "2025-03-17"
    assert prof.serving.served_model_name == "2025-13-45"


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_non_finite_numbers_are_refused(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, "p.yaml", f"hardware:\n  min_ram_gib: {value}\n")
    with pytest.raises(ConfigError, match="finite number"):
        load_profile(str(path))


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n# and another\n", "---\n"])
def test_empty_file_is_an_error(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "empty.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_profile(str(path))
    assert info.value.exit_code == 2
    assert info.value.message == f"{path}: profile file is empty"


def test_a_profile_of_one_key_gets_the_documented_defaults(tmp_path: Path) -> None:
    prof = load_profile(str(write(tmp_path, "minimal.yaml", "description: only this\n")))
    assert prof.name == "minimal"
    # The documented defaults, written out (FACTS: vLLM's 0.92 utilisation; the model's repo).
    sv, md, hw = prof.serving, prof.model, prof.hardware
    assert (prof.backend, hw.gpu_count, hw.gpu_ids) == ("vllm", 1, None)
    assert (md.hf_repo, md.hf_format, md.weights) == (
        "mistralai/Mistral-Small-3.1-24B-Instruct-2503",
        "mistral",
        "bf16",
    )
    assert md.ollama_tag == "mistral-small3.1:24b-instruct-2503-q4_K_M"
    assert (sv.max_model_len, sv.gpu_memory_utilization, sv.tensor_parallel_size) == (
        32768,
        0.92,
        1,
    )
    assert (sv.kv_cache_dtype, sv.max_num_seqs, sv.ollama_num_parallel) == ("auto", 16, 1)
    assert (sv.vision, sv.images_per_prompt, sv.tools) == (True, 4, True)
    assert (sv.served_model_name, sv.host, sv.port) == ("mistral-small-3.1", "127.0.0.1", None)
    assert (sv.extra_args, sv.env) == ([], {})
    assert md.id == "mistral-small-3.1"


def test_profile_to_dict_redacts_secrets(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        "serving:\n  env:\n    HF_TOKEN: hf_abcdefgh\n    OTHER: visible\n"
        "  extra_args: [--api-key, sk-12345678, --api-key=sk-87654321, --seed, '7']\n",
    )
    prof = load_profile(str(path))
    assert prof.serving.env["HF_TOKEN"] == "hf_abcdefgh"  # the profile itself keeps it
    data = profile_to_dict(prof)
    text = json.dumps(data)
    assert "hf_abcdefgh" not in text and "sk-12345678" not in text and "sk-87654321" not in text
    assert data["serving"]["env"] == {"HF_TOKEN": "***", "OTHER": "visible"}
    assert data["serving"]["extra_args"] == ["--api-key", "***", "--api-key=***", "--seed", "7"]
    assert "extends" not in data and data["source"] == str(path)


# ---------------------------------------------------------------------------------------------
# --set


def test_parse_set_short_and_dotted_keys() -> None:
    assert parse_set(
        [
            "max_model_len=16384",
            "serving.vision=false",
            "gpu_count=2",
            "model.hf_format=hf",
            "backend=docker",
            "served_model_name=my model",
            "extra_args=[--seed, 1]",
            "serving.env.NCCL_P2P_DISABLE=1",
            "host=",
        ]
    ) == {
        "serving": {
            "max_model_len": 16384,
            "vision": False,
            "served_model_name": "my model",
            "extra_args": ["--seed", 1],
            "env": {"NCCL_P2P_DISABLE": 1},
            "host": "",
        },
        "hardware": {"gpu_count": 2},
        "model": {"hf_format": "hf"},
        "backend": "docker",
    }
    assert parse_set(None) == {} and parse_set([]) == {}


def test_parse_set_later_value_wins() -> None:
    assert parse_set(["max_model_len=1024", "serving.max_model_len=2048"]) == {
        "serving": {"max_model_len": 2048}
    }


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("max_model_len", "--set expects key=value, got 'max_model_len'"),
        ("=5", "--set expects key=value"),
        ("max_len=5", "--set: unknown setting 'max_len'. Did you mean 'max_model_len'?"),
        ("extends=4090-q4", "--set: unknown setting 'extends'"),
        ("source=/tmp/x.yaml", "--set: unknown setting 'source'"),
    ],
)
def test_parse_set_errors(item: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_set([item])
    assert message in info.value.message


def test_parse_set_conflict() -> None:
    with pytest.raises(ConfigError, match="conflicts with another --set"):
        parse_set(["serving.port=1", "serving.port.x=2"])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("16384", 16384), ("32k", 32000), ("32K", 32768), ("128K", 131072), ("auto", "auto"),
     ("-1", "auto"), ("AUTO", "auto")],
)  # fmt: skip
def test_set_max_model_len_spellings(raw: str, expected: int | str) -> None:
    prof = load_profile("4090-q4", parse_set([f"max_model_len={raw}"]))
    assert prof.serving.max_model_len == expected


def test_set_overrides_apply_on_top_of_extends(user_dir: Path) -> None:
    write(user_dir, "mine.yaml", "extends: 2x4090-fp8-vision\nserving:\n  max_model_len: 8192\n")
    prof = load_profile(
        "mine", parse_set(["max_model_len=16384", "serving.vision=false", "name=renamed"])
    )
    assert prof.serving.max_model_len == 16384
    assert prof.serving.vision is False
    assert prof.serving.tensor_parallel_size == 2  # inherited
    assert prof.name == "renamed"
    assert prof.source.endswith("mine.yaml (with --set)")


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("tensor_parallel_size=3", "must divide the model's 8 KV heads"),
        ("tensor_parallel_size=16", "must divide the model's 8 KV heads"),
        ("tensor_parallel_size=2", "needs more GPUs than hardware.gpu_count 1"),
        ("gpu_memory_utilization=0", "must be in (0, 1]"),
        ("gpu_memory_utilization=1.01", "must be in (0, 1]"),
        ("gpu_memory_utilization=-0.5", "must be in (0, 1]"),
        ("max_model_len=131073", "must be between 256 and 131072"),
        ("max_model_len=256K", "must be between 256 and 131072"),
        ("max_model_len=big", "must be a number of tokens"),
        ("images_per_prompt=-1", "'serving.images_per_prompt' must be between 0 and 256"),
        ("backend=tgi", "'backend' must be one of: ollama, vllm, docker, simulator (got 'tgi')"),
        ("kv_cache_dtype=int4", "'serving.kv_cache_dtype' input should be"),
        ("vision=maybe", "'serving.vision' input should be a valid boolean"),
        ("serving.nope=1", "unknown key 'serving.nope'"),
        ("port=0", "'serving.port' must be between 1 and 65535 (got 0)"),
        ("min_cuda=12", "'hardware.min_cuda' must look like '12.1'"),
    ],
)
def test_impossible_values_are_refused_with_the_reason(item: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_profile("4090-q4", parse_set([item]))
    assert expected in info.value.message
    assert "\n" not in info.value.message
