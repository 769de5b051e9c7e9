"""The `msmall export` matrix: every target x shipped profile, with the arguments each needs
(shared by tests/unit/test_export.py's goldens and tests/e2e/test_export_e2e.py's consumers)."""

from __future__ import annotations

from msmall import paths
from msmall.export import TARGETS
from msmall.profiles import load_profile

SHIPPED = sorted(p.stem for p in paths.builtin_profiles_dir().glob("*.yaml"))


def export_args(target: str, profile: str) -> list[str]:
    """CLI arguments after `msmall export TARGET --profile PROFILE`."""
    prof = load_profile(profile)
    if target == "helm" and prof.backend == "ollama":
        return ["--backend", "vllm"]
    if target == "multinode" and prof.backend != "simulator":
        sv = prof.serving
        local = max(prof.hardware.gpu_count, sv.tensor_parallel_size) // sv.tensor_parallel_size
        return ["--backend", "vllm", "--set", f"serving.data_parallel_size={2 * local}"]
    return []


def expected_error(target: str, profile: str) -> bool:
    """Combinations msmall refuses (the golden holds the message): the simulator has no image
    and no data parallelism."""
    if target == "multinode" and profile == "4090-q4-3.2":
        # vLLM's build of this profile is FP8 (no 4-bit 3.2 repo): the per-node fit refuses it.
        return True
    return load_profile(profile).backend == "simulator" and target != "systemd"


CASES = [(t, p) for t in TARGETS for p in SHIPPED]
