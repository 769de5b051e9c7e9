"""Before anything loads: does the plan fit this machine? The memory fit against the GPUs, the
GPU count for tensor parallel, the CUDA driver, and the best profile for the machine.

`msmall serve` and `--dry-run` run `preflight()` through `launcher.final_plan`; `msmall doctor`
uses the same functions for its report. The engine's own memory rules come from the registry
(`Engine.fit`); the arithmetic they share is in `fit.py`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from msmall import backends, hardware
from msmall.errors import ConfigError, EnvironmentProblem
from msmall.profiles import Profile
from msmall.progress import NullReporter, Reporter

if TYPE_CHECKING:
    from msmall.fit import FitReport
    from msmall.hardware import Inventory
    from msmall.plan import LaunchPlan

# Lowest Linux driver branch for each CUDA driver version (NVIDIA's CUDA toolkit release notes,
# table 3), for a fix that names the driver to install.
CUDA_MIN_DRIVER = {
    (11, 8): 520,
    (12, 0): 525,
    (12, 1): 530,
    (12, 2): 535,
    (12, 3): 545,
    (12, 4): 550,
    (12, 5): 555,
    (12, 6): 560,
    (12, 8): 570,
    (12, 9): 575,
    (13, 0): 580,
}


def needs_gpu(prof: Profile) -> bool:
    return backends.resolve(prof.backend)[0].needs_gpu and prof.hardware.gpu_count > 0


def gpus_needed(prof: Profile) -> int:
    sv = prof.serving
    return max(prof.hardware.gpu_count, sv.tensor_parallel_size * sv.data_parallel_size)


def known_profiles() -> list[Profile]:
    """Every profile that loads (shipped and the user's); broken ones are doctor's to report."""
    from msmall.profiles import load_all

    return [p for p in load_all() if isinstance(p, Profile)]


# ---------------------------------------------------------------------------------------------
# The memory fit through the engine's rules


def check_fit(
    profile: Profile,
    gpu_memory_mib: Sequence[int],
    backend: str | None = None,
    free_mib: Sequence[int] | None = None,
    *,
    alternatives: Iterable[Profile] | None = None,
    env: Mapping[str, str] | None = None,
) -> FitReport:
    """Will `profile` fit GPUs with these totals (MiB, as nvidia-smi reports them)?

    gpu_memory_mib lists the GPUs that will be used: vLLM takes the first tensor_parallel_size of
    them, Ollama spreads over all of them. free_mib, when known, is each GPU's free memory: vLLM
    refuses to start below utilization x total; Ollama only uses what is free. `alternatives`
    (e.g. the shipped profiles) lets the suggestion name a profile that fits instead. `env`: the
    environment the engine will run with (None: the profile's own env).
    """
    backend = backend or profile.backend
    if free_mib is not None and len(free_mib) != len(gpu_memory_mib):
        raise ConfigError("free_mib must list the same GPUs as gpu_memory_mib")
    engine, _ = backends.resolve(backend)
    if engine.fit is None:
        from msmall.fit import simulator_report

        return simulator_report(profile, backend)
    report = engine.fit(profile, gpu_memory_mib, free_mib, backend, env)
    if report.verdict == "does_not_fit" and report.max_context == 0 and alternatives is not None:
        # Only when it would not fit these GPUs idle either: memory that other processes hold
        # right now is theirs to free, and the report's own suggestion says so.
        idle = (
            report if free_mib is None else engine.fit(profile, gpu_memory_mib, None, backend, env)
        )
        if idle.verdict == "does_not_fit":
            others = [p for p in alternatives if p.name != profile.name]
            # The same model first: a 3.1 user is pointed to a 3.1 profile where one fits.
            same = [p for p in others if p.model.id == profile.model.id]
            better = recommend(same, gpu_memory_mib) or recommend(others, gpu_memory_mib)
            if better:
                report.suggestion = f"Use the profile {better}, which fits these GPUs."
    return report


def largest_context(
    profile: Profile,
    gpu_memory_mib: Sequence[int],
    backend: str | None = None,
    free_mib: Sequence[int] | None = None,
) -> int:
    """The largest max_model_len that fits (capped at 131,072); 0 if none."""
    return check_fit(profile, gpu_memory_mib, backend, free_mib).max_context


def recommend(profiles: Iterable[Profile], gpu_memory_mib: Sequence[int]) -> str | None:
    """The best profile that fits these GPUs: vision first, then precision, then context.

    Profiles for the simulator (or for no GPU) and loading errors in the list are skipped.
    Ties go to "fits" over "tight", then to fewer GPUs, then to the first name.
    """
    from msmall import fit

    best: tuple[Any, ...] | None = None
    name = None
    for prof in sorted((p for p in profiles if isinstance(p, Profile)), key=lambda p: p.name):
        if not needs_gpu(prof):
            continue
        need = gpus_needed(prof)
        if len(gpu_memory_mib) < need:
            continue
        report = check_fit(prof, list(gpu_memory_mib[:need]))
        if report.verdict == "does_not_fit":
            continue
        key = (
            prof.serving.vision,
            fit.PRECISION_BITS[report.weights],
            report.requested_context,
            fit.verdict_rank(report.verdict),
            report.max_context,
            -need,
        )
        if best is None or key > best:
            best, name = key, prof.name
    return name


# nvidia-smi memory.total of common GPUs, MiB. 4090, 3090, H100: samples/nvidia-smi (rtx4090-x8,
# rtx3090-x2, h100-80gb-hbm3-idle). L40S and A100-SXM4-80GB: nvidia-smi listings on driver 580.
COMMON_GPUS: dict[str, list[int]] = {
    "RTX 4090 24 GB": [24564],
    "RTX 3090 24 GB": [24576],
    "L40S 48 GB": [46068],
    "A100 80 GB": [81920],
    "H100 80 GB": [81559],
    "2x RTX 4090": [24564, 24564],
    "2x L40S": [46068, 46068],
}


def _cell(report: FitReport) -> str:
    if report.verdict == "does_not_fit" and report.reason.startswith("Tensor parallel"):
        return f"needs {report.reason.split(' needs ')[1].split(';')[0]}"
    words = {"fits": "fits", "tight": "tight", "does_not_fit": "does not fit"}[report.verdict]
    if report.cpu_offload_gib and report.verdict != "does_not_fit":
        words += " (vision on CPU)"
    if report.max_context:
        return f"{words}, max {report.max_context:,}"
    return words


def markdown_table(profiles: Iterable[Profile], gpus: dict[str, list[int]] | None = None) -> str:
    """Each profile (and each Ollama profile also under vLLM) against common GPUs."""
    gpus = gpus or COMMON_GPUS
    header = "| profile | backend | context | " + " | ".join(gpus) + " |"
    rule = "|" + " --- |" * (3 + len(gpus))
    rows = [header, rule]
    for prof in sorted(profiles, key=lambda p: p.name):
        if not needs_gpu(prof):
            continue
        backends = [prof.backend] + (["vllm"] if prof.backend == "ollama" else [])
        for backend in backends:
            context = prof.serving.max_model_len
            cells = [_cell(check_fit(prof, sizes, backend)) for sizes in gpus.values()]
            rows.append(f"| {prof.name} | {backend} | {context} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# CUDA driver


def version_tuple(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    match = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    if not match:
        return None
    return tuple(int(p) for p in match.groups() if p is not None)


def driver_for_cuda(cuda: str) -> str:
    wanted = version_tuple(cuda) or (0, 0)
    for version, branch in sorted(CUDA_MIN_DRIVER.items()):
        if version >= wanted[:2]:
            return f"R{branch}"
    return "a newer"


def cuda_problem(inv: Inventory, min_cuda: str | None) -> str | None:
    """Why the driver's CUDA version is below the profile's minimum; None when it is not (or unknown)."""
    have, need = version_tuple(inv.cuda_version), version_tuple(min_cuda)
    if have is None or need is None or have[:2] >= need[:2]:
        return None
    return (
        f"the NVIDIA driver {inv.driver_version or '?'} supports CUDA {inv.cuda_version}; "
        f"the profile needs CUDA {min_cuda} (driver {driver_for_cuda(min_cuda or '')} or newer)"
    )


def cuda_fix(min_cuda: str) -> str:
    return f"Update the NVIDIA driver to {driver_for_cuda(min_cuda)} or newer and reboot."


# ---------------------------------------------------------------------------------------------
# Recommendation


def recommend_for(inv: Inventory, profiles: list[Profile]) -> tuple[str | None, str]:
    """The best of these profiles for this machine's GPUs (by their total memory), and why.

    (None, "no NVIDIA GPU found: ...") where there is no GPU to size against.
    """
    if not inv.gpus:
        return None, f"no NVIDIA GPU found: {inv.problem or 'nvidia-smi lists none'}"
    gpus = hardware.gpus_for(inv, "process")
    totals = hardware.memory_totals(gpus)
    if not totals:
        return None, "the GPUs do not report their memory size, so nothing can be sized for them"
    name = recommend(profiles, totals)
    where = hardware.describe_gpus(gpus)
    if name is None:
        return None, f"no profile fits {where}"
    prof = next(p for p in profiles if p.name == name)
    report = check_fit(prof, totals[: gpus_needed(prof)])
    verdict = {"fits": "fits", "tight": "fits, tightly,"}.get(report.verdict, report.verdict)
    why = (
        f"it {verdict} {where}: {report.weights.upper()} weights, "
        f"{'vision, ' if prof.serving.vision else ''}up to {report.max_context:,} tokens of context"
    )
    problem = cuda_problem(inv, prof.hardware.min_cuda)
    if problem:
        why += f" (but {problem})"
    return name, why


# ---------------------------------------------------------------------------------------------
# The preflight of `msmall serve`


@dataclass
class Preflight:
    """What the preflight decided. ``profile`` has `max_model_len: auto` resolved where the
    engine takes a number; ``verdict`` is the fit's (or "skipped" with the reason)."""

    profile: Profile
    verdict: str
    reason: str
    forced: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "reason": self.reason, "forced": self.forced}


def _refuse_or_warn(
    problem: EnvironmentProblem, force: bool, reporter: Reporter, what: str
) -> None:
    if not force:
        raise problem
    reporter.warn(f"{problem.message} (--force: launching anyway; {what})")


def fit_on(
    prof: Profile,
    gpus: list,
    backend: str,
    use_free: bool,
    others: list[Profile] | None,
    env: Mapping[str, str] | None = None,
) -> FitReport | None:
    totals = hardware.memory_totals(gpus)
    if totals is None:
        return None
    free = hardware.memory_free(gpus) if use_free else None
    return check_fit(prof, totals, backend, free, alternatives=others, env=env)


def engine_env(plan: LaunchPlan, runtime: str) -> dict[str, str]:
    """The environment the engine will see: a host process inherits the user's shell under the
    plan's variables (runtimes/process.py process_env); a container gets only its own."""
    if runtime == "container":
        return dict(plan.container.environment) if plan.container else {}
    from msmall.runtimes.process import process_env

    return process_env(plan)


def preflight(
    prof: Profile,
    plan: LaunchPlan,
    inventory: Inventory,
    *,
    force: bool = False,
    reporter: Reporter | None = None,
    others: list[Profile] | None = None,
) -> Preflight:
    """Refuse a launch this machine cannot hold, before anything loads.

    Checks, in order: enough GPUs for tensor parallel, the memory fit (against the memory free
    now), the CUDA driver version. Each refusal is an EnvironmentProblem (exit 3) naming the
    numbers and what to use instead; with ``force`` it becomes a warning. ``others``: profiles a
    refusal may point to instead (default: every known profile, loaded once).
    """
    reporter = reporter or NullReporter()
    engine, runtime = backends.resolve(plan.backend)
    if not engine.needs_gpu or prof.hardware.gpu_count == 0:
        return Preflight(prof, "skipped", f"{engine.label} needs no GPU")
    inv = inventory
    gpus = hardware.gpus_for(inv, runtime, plan.env, prof.hardware.gpu_ids)
    if not gpus:
        why = f"no GPU readable ({inv.problem or 'none listed'}): skipping the memory check"
        reporter.info(why)
        return Preflight(prof, "skipped", why)
    where = hardware.describe_gpus(gpus)
    if others is None:
        others = [p for p in known_profiles() if p.name != prof.name]
    forced = False

    tp = prof.serving.tensor_parallel_size
    dp = prof.serving.data_parallel_size if engine.tensor_parallel else 1
    if engine.tensor_parallel and len(gpus) < tp * dp:
        name, _ = recommend_for(inv, others)
        instead = f"Use --profile {name}, which fits this machine" if name else "Use fewer GPUs"
        message = (
            f"profile {prof.name} runs tensor parallel {tp}"
            + (f" x data parallel {dp}" if dp > 1 else "")
            + f" and needs {tp * dp} GPUs; "
            f"this machine has {len(gpus)} ({where})"
        )
        _refuse_or_warn(
            EnvironmentProblem(message, f"{instead}, or --force to try anyway."),
            force,
            reporter,
            f"{engine.label} will fail to start",
        )
        return Preflight(prof, "does_not_fit", message, forced=True)

    # The fit sees what the engine will: an OLLAMA_GPU_OVERHEAD or OLLAMA_CONTEXT_LENGTH exported
    # in the user's shell reaches `ollama serve` (the plan's own variables win over the shell's).
    report = fit_on(prof, gpus, plan.backend, True, others, engine_env(plan, runtime))
    resolved = prof
    if report is None:
        verdict, reason = "skipped", f"{where} report no memory size: skipping the memory check"
        reporter.info(reason)
    else:
        verdict, reason = report.verdict, f"memory check ({where}): {report.reason}"
        if report.verdict == "does_not_fit":
            fix = report.suggestion or "Run `msmall doctor` to see the profiles that fit."
            _refuse_or_warn(
                EnvironmentProblem(
                    f"profile {prof.name} ({plan.backend}) does not fit {where}: {report.reason}",
                    f"{fix} Or --force to launch anyway.",
                ),
                force,
                reporter,
                "expect an out-of-memory failure",
            )
            forced = True
        elif report.verdict == "tight":
            reporter.warn(reason + (f" {report.suggestion}" if report.suggestion else ""))
        else:
            reporter.info(reason)
        if (
            report.verdict != "does_not_fit"
            and prof.serving.max_model_len == "auto"
            and engine.resolves_auto_context
        ):
            resolved = prof.model_copy(deep=True)
            # validate_assignment: the number goes through the same checks as a YAML value.
            resolved.serving.max_model_len = report.max_context
            reporter.info(
                f"max_model_len auto -> {report.max_context:,} tokens, the largest context "
                f"that fits {where}"
            )

    problem = cuda_problem(inv, prof.hardware.min_cuda)
    if problem and prof.hardware.min_cuda:
        _refuse_or_warn(
            EnvironmentProblem(
                f"profile {prof.name}: {problem}",
                f"{cuda_fix(prof.hardware.min_cuda)} Or --force to try anyway.",
            ),
            force,
            reporter,
            "CUDA may refuse to start (error 803/804)",
        )
        forced = True

    if runtime == "container":
        warning = _cuda13_image_warning(plan.image, inv.driver_version)
        if warning:
            reporter.warn(warning)
    return Preflight(resolved, verdict, reason, forced)


def _cuda13_image_warning(image: str | None, driver: str | None) -> str | None:
    from msmall.backends.vllm import versions

    major = hardware.driver_major(driver)
    if not image or major is None or major >= versions.CUDA13_MIN_DRIVER:
        return None
    tag = image.rpartition(":")[2]
    if tag.endswith("-cu129") or not version_tuple(tag):
        return None
    if not versions.at_least(tag, versions.VLLM_CUDA13_IMAGES_FROM):
        return None
    return (
        f"{image} is a CUDA 13 image, which needs an R{versions.CUDA13_MIN_DRIVER}+ driver; this "
        f"machine has {driver}: use {image}-cu129 or update the driver"
    )
