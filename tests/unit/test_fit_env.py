"""The serve preflight sizes Ollama with the environment `ollama serve` will really get.

msmall starts `ollama serve` with the user's shell environment under the plan's variables
(runtimes/process.py process_env), so an OLLAMA_GPU_OVERHEAD or OLLAMA_CONTEXT_LENGTH exported in
the shell changes how much Ollama puts on the GPU (ollama envconfig/config.go reads both from the
process environment); OLLAMA_NUM_PARALLEL and OLLAMA_KV_CACHE_TYPE are always set by the plan, so
the shell's values never reach the server. Expected numbers by hand (FACTS.md, docs/memory.md §4):

  RTX 4090 memory.total 24,564 MiB; CUDA sees 24,564 - 479 = 24,085 MiB = 23.521 GiB.
  Ollama keeps 457 MiB free per GPU: usable (24,085 - 457) MiB = 23,628 MiB = 23.074 GiB.
  4090-q4: Q4_K_M text weights 13.1 GiB, 0.5 GiB compute graph, f16 cache (flash attention):
  KV per token 2 x 40 layers x 8 KV heads x 128 x 2 B = 163,840 B = 160 KiB.
  Vision encoder 769.3 MiB projector + 8.8 GiB image graph = 9.551 GiB, offloaded first.
"""

from __future__ import annotations

import pytest

from msmall import preflight as _preflight
from msmall.backends import PlanOptions, build_plan
from msmall.backends.ollama.fit import fit_ollama
from msmall.errors import EnvironmentProblem
from msmall.hardware import GpuInfo, Inventory
from msmall.profiles import load_profile, parse_set
from msmall.runtimes.process import process_env

GiB = 2**30
RTX4090 = 24564


class _Quiet:
    def info(self, text: str) -> None:
        pass

    def warn(self, text: str) -> None:
        pass


def _inventory() -> Inventory:
    return Inventory(
        gpus=[GpuInfo(index=0, name="NVIDIA GeForce RTX 4090", memory_total_mib=RTX4090)],
        driver_version="580.65.06",
        cuda_version="13.0",
        source="nvml",
    )


def _run(*sets: str):
    prof = load_profile("4090-q4", parse_set(list(sets)))
    plan = build_plan(prof, PlanOptions(detect_installed=False))
    return plan, _preflight.preflight(
        prof, plan, _inventory(), force=False, reporter=_Quiet(), others=[]
    )


@pytest.fixture(autouse=True)
def _clean_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "CUDA_VISIBLE_DEVICES", "OLLAMA_GPU_OVERHEAD", "OLLAMA_CONTEXT_LENGTH",
        "OLLAMA_NUM_PARALLEL", "OLLAMA_KV_CACHE_TYPE", "OLLAMA_FLASH_ATTENTION",
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


def test_no_shell_variables_text_fits_vision_on_cpu() -> None:
    """32,768 x 160 KiB = 5.0 GiB cache; 13.1 + 5.0 + 0.5 = 18.6 GiB of 23.074: tight (the
    4.47 GiB left is less than the 9.55 GiB vision encoder)."""
    _, result = _run()
    assert result.verdict == "tight"
    assert "23.1 GiB usable on 1 GPU" in result.reason


def test_shell_gpu_overhead_is_kept_free_by_the_preflight(monkeypatch: pytest.MonkeyPatch) -> None:
    """OLLAMA_GPU_OVERHEAD=5 GiB in the shell: 23.074 - 5 = 18.074 GiB usable < 18.6 GiB of text.

    Spill = 18.6 - 18.074 = 0.526 GiB of text + the 9.551 GiB vision encoder = 10.08 GiB on CPU;
    the largest all-GPU context is (18.0742 - 0.5 - 13.1) = 4.4742 GiB / 160 KiB = 29,322 tokens.
    """
    monkeypatch.setenv("OLLAMA_GPU_OVERHEAD", str(5 * GiB))
    prof = load_profile("4090-q4")
    plan = build_plan(prof, PlanOptions(detect_installed=False))
    assert process_env(plan)["OLLAMA_GPU_OVERHEAD"] == str(5 * GiB)  # what ollama serve gets
    with pytest.raises(EnvironmentProblem) as info:
        _preflight.preflight(prof, plan, _inventory(), force=False, reporter=_Quiet(), others=[])
    text = info.value.message
    assert "10.1 GiB would run on CPU" in text
    assert "18.1 GiB is usable on 1 GPU" in text
    assert "--set max_model_len=28672" in (info.value.fix or "")  # 29,322 rounded down to 1,024s
    report = _preflight.check_fit(prof, [RTX4090], env=process_env(plan))
    assert report.cpu_offload_gib == 10.08
    assert report.max_context == int((23628 / 1024 - 5 - 0.5 - 13.1) * GiB // 163840) == 29322


def test_shell_context_length_counts_when_the_profile_says_auto(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """max_model_len auto: msmall sets no OLLAMA_CONTEXT_LENGTH, so the shell's 65,536 reaches
    Ollama. 65,536 x 160 KiB = 10.0 GiB: 13.1 + 10.0 + 0.5 = 23.6 > 23.074 GiB, 0.526 GiB of
    text spills, 10.08 GiB on CPU with the vision encoder. Without it Ollama picks 32,768 for
    23.52 GiB of VRAM (FACTS: 32k from 23 GiB up), which is tight as above."""
    _, auto = _run("serving.max_model_len=auto")
    assert auto.verdict == "tight"
    assert "32,768-token" in auto.reason

    monkeypatch.setenv("OLLAMA_CONTEXT_LENGTH", "65536")
    with pytest.raises(EnvironmentProblem) as info:
        _run("serving.max_model_len=auto")
    assert "10.1 GiB would run on CPU" in info.value.message
    assert "65,536-token" in info.value.message


def test_the_profiles_context_wins_over_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """4090-q4 sets max_model_len 32768: the plan's OLLAMA_CONTEXT_LENGTH=32768 overrides the
    shell's 65,536 (process_env puts the plan on top), so the fit stays at 32,768 (tight)."""
    monkeypatch.setenv("OLLAMA_CONTEXT_LENGTH", "65536")
    plan, result = _run()
    assert process_env(plan)["OLLAMA_CONTEXT_LENGTH"] == "32768"
    assert result.verdict == "tight"
    assert "32,768-token" in result.reason


def test_shell_parallel_slots_never_reach_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan always sets OLLAMA_NUM_PARALLEL (the profile's 1), so a shell's 2 is overridden:
    one slot of 32,768 tokens, tight. (Two slots would be 10.0 GiB of cache and not fit.)"""
    monkeypatch.setenv("OLLAMA_NUM_PARALLEL", "2")
    plan, result = _run()
    assert process_env(plan)["OLLAMA_NUM_PARALLEL"] == "1"
    assert result.verdict == "tight"
    assert "slots" not in result.reason


def test_fit_ollama_env_replaces_the_profile_env() -> None:
    """env=None reads the profile's env (OLLAMA_GPU_OVERHEAD 5 GiB: 18.1 GiB usable); a given env
    is the whole environment (here without the overhead: 23.1 GiB usable)."""
    prof = load_profile("4090-q4", parse_set([f"serving.env.OLLAMA_GPU_OVERHEAD={5 * GiB}"]))
    assert "18.1 GiB is usable" in fit_ollama(prof, [RTX4090], None).reason
    assert "23.1 GiB usable" in fit_ollama(prof, [RTX4090], None, env={}).reason
