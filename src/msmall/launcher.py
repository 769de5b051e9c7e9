"""The serve pipeline as functions: choose a profile, plan, preflight, start, wait, smoke, record.

`cli/serve.py` calls these; tests drive them directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from msmall.backends import PlanOptions, build_plan
from msmall.errors import ConfigError
from msmall.plan import LaunchPlan
from msmall.profiles import Profile, load_profile, parse_set


@dataclass
class ServeRequest:
    profile: str | None
    overrides: list[str] = field(default_factory=list)
    options: PlanOptions = field(default_factory=PlanOptions)
    detach: bool = False
    smoke: bool = True
    force: bool = False
    pull: str = "missing"
    json_output: bool = False


def choose_profile(profile_ref: str | None, read_hardware: bool) -> tuple[str, list[str]]:
    """The profile to use and why; without --profile, the recommended one for this machine."""
    if profile_ref:
        return profile_ref, []
    raise ConfigError(
        "no --profile given",
        "Pick one from `msmall profiles list`, e.g. --profile 4090-q4 (or --profile demo for the "
        "simulator).",
    )


def plan_for(
    profile_ref: str | None, overrides: list[str], options: PlanOptions, read_hardware: bool
) -> tuple[Profile, LaunchPlan, list[str]]:
    ref, notes = choose_profile(profile_ref, read_hardware)
    prof = load_profile(ref, parse_set(overrides))
    return prof, build_plan(prof, options), notes


def serve(request: ServeRequest) -> dict:
    raise ConfigError("serving is not implemented yet", "Use --dry-run.")
