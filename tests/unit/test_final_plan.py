"""`serve --dry-run` prints the plan `serve` runs: the same image tag, the same resolved context,
the same preflight refusal, for every shipped profile x backend x fake GPU machine.

Both go through the real CLI (Typer, in process); `serve` is stopped at the moment it would start
the server (launcher.run_plan), and what it was about to run is compared with the dry-run JSON.
The GPUs come from the fake nvidia-smi, read once per machine.
"""

from __future__ import annotations

import json

import pytest
import typer.testing
from typer.main import get_command
from typer.testing import CliRunner

from msmall import hardware, launcher, paths
from msmall.cli.app import app
from msmall.errors import MsmallError
from msmall.profiles import load_profile

SHIPPED = sorted(p.stem for p in paths.builtin_profiles_dir().glob("*.yaml"))
BACKENDS = ("ollama", "vllm", "docker", "simulator")
# The fake nvidia-smi's machines; its 4090 scenarios run driver 550 (older than R580).
SCENARIOS = ("none", "1x4090", "2x4090", "h100")


@pytest.fixture(scope="module")
def inventories(tmp_path_factory: pytest.TempPathFactory) -> dict[str, hardware.Inventory]:
    """Each scenario's inventory, read once through the fake nvidia-smi."""
    from conftest import FAKES_DIR

    found = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", f"{FAKES_DIR}:/usr/bin:/bin")
        mp.setenv("MSMALL_GPU_SOURCE", "nvidia-smi")
        for scenario in SCENARIOS:
            mp.setenv("FAKE_NVIDIA_SMI_SCENARIO", scenario)
            found[scenario] = hardware.read_inventory("nvidia-smi")
    return found


def _outcome(result) -> dict:
    if isinstance(result.exception, MsmallError):
        exc = result.exception
        return {"error": type(exc).__name__, "exit": exc.exit_code, "message": exc.message}
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    # The first JSON document: serve --json prints its (here empty) result after the plan.
    return {"plan": json.JSONDecoder().raw_decode(result.stdout)[0]}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_dry_run_is_the_plan_serve_runs(
    scenario: str, inventories, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = []

    def read_inventory(source: str = "auto", **_: object) -> hardware.Inventory:
        reads.append(source)
        return inventories[scenario]

    monkeypatch.setattr(hardware, "read_inventory", read_inventory)
    ran = []

    def run_plan(plan, request, reporter):
        # Where serve would start the engine: keep what it would run, print it like dry-run.
        ran.append(plan)
        print(json.dumps(plan.to_public_dict()))
        return {}

    monkeypatch.setattr(launcher, "run_plan", run_plan)
    # One Click command for the 100-odd invocations, as one msmall process builds it once:
    # CliRunner otherwise rebuilds every command's parameters from its signature each call
    # (about a quarter of this test's CPU).
    command = get_command(app)
    monkeypatch.setattr(typer.testing, "_get_command", lambda _app: command)
    runner = CliRunner()
    checked = 0
    for profile in SHIPPED:
        for backend in BACKENDS:
            for extra in ([], ["--set", "max_model_len=auto"]):
                if extra and backend == "ollama":
                    continue  # Ollama takes no number for auto: nothing to resolve
                args = ["serve", "-p", profile, "-b", backend, "--vllm-version", "0.33.0", *extra]
                reads.clear()
                dry = _outcome(runner.invoke(app, [*args, "--dry-run", "--json"]))
                assert reads == ["auto"], "dry-run reads the hardware exactly once"
                ran.clear()
                serve = _outcome(runner.invoke(app, [*args, "--json"]))
                assert dry == serve, (scenario, args)
                assert len(ran) == ("plan" in serve)
                checked += 1
                if "plan" not in dry:
                    continue
                plan = dry["plan"]
                gpus_known = scenario != "none" and load_profile(profile).hardware.gpu_count
                if extra and gpus_known and backend != "simulator":
                    # Where GPUs are known, auto becomes the largest context that fits them.
                    assert isinstance(plan["max_model_len"], int), args
                elif extra:
                    assert plan["max_model_len"] == "auto", args
                if backend == "docker" and scenario in ("1x4090", "2x4090"):
                    # Driver 550 < R580: the CUDA 12.9 build of the image.
                    assert plan["image"].endswith("-cu129"), plan["image"]
                if backend == "docker" and scenario == "h100":
                    assert not plan["image"].endswith("-cu129")
    assert checked == len(SHIPPED) * 7


def test_refusals_match_the_machine(inventories, monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples from the issue: BF16 on two 24 GB cards is refused by dry-run too (exit 3)."""
    result = launcher.final_plan(
        "2x4090-fp8-vision", options=launcher.PlanOptions(backend="docker", vllm_version="0.33.0"),
        inventory=inventories["2x4090"],
    )  # fmt: skip
    assert result.image == "vllm/vllm-openai:v0.33.0-cu129"
    assert result.preflight is not None and result.preflight["verdict"] in ("fits", "tight")
    with pytest.raises(MsmallError) as refused:
        launcher.final_plan("2x4090-bf16-vision", inventory=inventories["2x4090"])
    assert refused.value.exit_code == 3 and "does not fit" in refused.value.message
    forced = launcher.final_plan("2x4090-bf16-vision", force=True, inventory=inventories["2x4090"])
    assert forced.preflight == {
        "verdict": "does_not_fit",
        "reason": forced.preflight["reason"],
        "forced": True,
    }
    assert any("--force" in w for w in forced.warnings)
    auto = launcher.final_plan(
        "h100-bf16-vision", ["max_model_len=auto"], inventory=inventories["h100"]
    )
    assert isinstance(auto.max_model_len, int) and auto.max_model_len > 65536
    argv = auto.argv
    assert argv[argv.index("--max-model-len") + 1] == str(auto.max_model_len)
