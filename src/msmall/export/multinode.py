"""Multi-node vLLM: data_parallel_size copies of the model across machines, one endpoint.

Flags from vLLM 0.33's own parser (vllm/engine/arg_utils.py, EngineArgs.add_cli_args, the
ParallelConfig group; `--headless` in vllm/entrypoints/common/cli_args.py):
- node 0 runs the API server and data_parallel_size_local engines:
  `--data-parallel-size N --data-parallel-size-local L --data-parallel-address HEAD
   --data-parallel-rpc-port P`
- every other node runs engines only: the same plus `--headless --data-parallel-start-rank R`.
  (Internal load balancing: vLLM 0.33 refuses external-LB data parallel for dense models such as
  Mistral Small, EngineArgs.create_engine_config "Non-MoE models do not support external data
  parallel mode".)
- the Ray variant: `ray start --head` on node 0, `ray start --address HEAD:6379` elsewhere, then
  one `vllm serve` on node 0 with `--data-parallel-backend ray` and
  `--distributed-executor-backend ray`; Ray places the engines.

Each node holds data_parallel_size_local full copies, each on tensor_parallel_size GPUs, so the
memory fit per node is the profile's fit on tensor_parallel_size GPUs of hardware.min_vram_gib.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING

from msmall.errors import ConfigError
from msmall.export import Export, ExportOptions, header, public_env

if TYPE_CHECKING:
    from msmall.plan import LaunchPlan
    from msmall.profiles import Profile

RPC_PORT = 13345
RAY_PORT = 6379
HEAD_VAR = "$HEAD_IP"


@dataclass
class Layout:
    data_parallel: int
    tensor_parallel: int
    gpus_per_node: int
    local: int  # data parallel ranks per node
    nodes: int


def layout(profile: Profile) -> Layout:
    sv = profile.serving
    dp, tp = sv.data_parallel_size, sv.tensor_parallel_size
    gpus = max(profile.hardware.gpu_count, tp)
    local = gpus // tp
    if dp < 2:
        raise ConfigError(
            f"profile {profile.name} has data_parallel_size {dp}: nothing to spread over nodes",
            "Pass --set serving.data_parallel_size=N (N copies of the model, "
            f"{local} per node of {gpus} GPUs).",
        )
    if dp <= local:
        raise ConfigError(
            f"data_parallel_size {dp} fits one node of {gpus} GPUs: `msmall serve` runs it there",
            "Raise data_parallel_size, or lower hardware.gpu_count to the GPUs each node has.",
        )
    if dp % local:
        raise ConfigError(
            f"data_parallel_size {dp} does not split into nodes of {local} copies "
            f"({gpus} GPUs / tensor parallel {tp})",
            f"Use a multiple of {local}.",
        )
    return Layout(dp, tp, gpus, local, dp // local)


def _base_argv(plan: LaunchPlan) -> list[str]:
    """The plan's `vllm serve` argv without its data-parallel flag (each node gets its own)."""
    from msmall.plan import redact_argv

    argv = redact_argv(plan.argv)
    if "--data-parallel-size" in argv:
        i = argv.index("--data-parallel-size")
        del argv[i : i + 2]
    return argv


def node_argvs(plan: LaunchPlan, profile: Profile, head: str = HEAD_VAR) -> dict[str, list[str]]:
    """Each node's `vllm serve` argv (mp backend) and the Ray variant's, by script name."""
    lay = layout(profile)
    base = _base_argv(plan)
    common = [
        "--data-parallel-size", str(lay.data_parallel),
        "--data-parallel-size-local", str(lay.local),
        "--data-parallel-address", head,
        "--data-parallel-rpc-port", str(RPC_PORT),
    ]  # fmt: skip
    out = {"node-0.sh": [*base, *common]}
    for node in range(1, lay.nodes):
        out[f"node-{node}.sh"] = [
            *base, *common, "--headless", "--data-parallel-start-rank", str(node * lay.local),
        ]  # fmt: skip
    out["ray-serve.sh"] = [
        *base,
        "--data-parallel-size", str(lay.data_parallel),
        "--data-parallel-size-local", str(lay.local),
        "--data-parallel-backend", "ray",
        "--distributed-executor-backend", "ray",
    ]  # fmt: skip
    return out


def node_gpu(profile: Profile) -> tuple[str, int] | None:
    """The smallest common GPU that meets hardware.min_vram_gib (the profile's floor is below
    the card's real size: 22 GiB stands for a 24 GB RTX 4090)."""
    from msmall.preflight import COMMON_GPUS

    floor = profile.hardware.min_vram_gib * 1024
    if not floor:
        return None
    single = sorted((sizes[0], name) for name, sizes in COMMON_GPUS.items() if len(sizes) == 1)
    for mib, name in single:
        if mib >= floor:
            return name, mib
    return f"{profile.hardware.min_vram_gib:g} GiB GPU", int(floor)


def node_fit(profile: Profile) -> str:
    from msmall.preflight import check_fit

    gpu = node_gpu(profile)
    if gpu is None:
        return "no hardware.min_vram_gib in the profile: the per-node memory fit was not checked"
    name, mib = gpu
    one_copy = profile.model_copy(
        update={"serving": profile.serving.model_copy(update={"data_parallel_size": 1})}
    )
    tp = profile.serving.tensor_parallel_size
    report = check_fit(one_copy, [mib] * tp, "vllm")
    if report.verdict == "does_not_fit":
        raise ConfigError(
            f"one copy does not fit {tp} x {name} on a node: {report.reason}",
            report.suggestion or "Lower max_model_len, or use larger GPUs.",
        )
    return f"per node, each copy on {tp} x {name}: {report.verdict}. {report.reason}"


def _shell(argv: list[str]) -> str:
    """One flag and its value a line, like `serve --dry-run`; $HEAD_IP left to the shell."""
    from msmall.plan import _group_flags

    def word(a: str) -> str:
        return f'"{a}"' if a == HEAD_VAR else shlex.quote(a)

    return " \\\n  ".join(" ".join(word(a) for a in g) for g in _group_flags(argv))


def _script(plan: LaunchPlan, title: str, body: list[str], needs_head: bool = True) -> str:
    plain, secrets = public_env(plan.env)
    lines = ["#!/bin/sh", header(plan, "multinode").rstrip("\n"), f"# {title}", "set -eu"]
    if needs_head:
        lines.append(': "${HEAD_IP:?export HEAD_IP=<node 0 address, reachable from every node>}"')
    if plan.engine == "vllm":
        lines.append("# HF_TOKEN from the environment (or `hf auth login`) for gated repos")
    for name in secrets:
        lines.append(f': "${{{name}:?export {name} first (never written into this file)}}"')
    lines += [f"export {k}={shlex.quote(v)}" for k, v in plain.items()]
    lines += body
    return "\n".join(lines) + "\n"


def render(plan: LaunchPlan, profile: Profile, opts: ExportOptions) -> Export:
    lay = layout(profile)
    fit = node_fit(profile)
    head = opts.head_address or HEAD_VAR
    argvs = node_argvs(plan, profile, head)
    files: dict[str, str] = {}
    for node in range(lay.nodes):
        name = f"node-{node}.sh"
        role = "API server + engines" if node == 0 else "engines only (--headless)"
        ranks = f"ranks {node * lay.local}..{(node + 1) * lay.local - 1}"
        files[name] = _script(
            plan,
            f"node {node} of {lay.nodes}: {role}, data parallel {ranks}",
            ["exec " + _shell(argvs[name])],
            needs_head=head == HEAD_VAR,
        )
    files["ray-head.sh"] = _script(
        plan,
        "Ray variant, node 0: start the Ray head, then ray-serve.sh here once every node joined",
        [f"ray start --head --port {RAY_PORT}"],
        needs_head=False,
    )
    files["ray-worker.sh"] = _script(
        plan,
        "Ray variant, every other node: join the head",
        [f'ray start --address "${{HEAD_IP}}:{RAY_PORT}" --block'],
        needs_head=True,
    )
    files["ray-serve.sh"] = _script(
        plan,
        "Ray variant, node 0: one vllm serve; Ray places the engines on the nodes",
        ["exec " + _shell(argvs["ray-serve.sh"])],
        needs_head=False,
    )
    readme = [
        f"msmall multinode: profile {plan.profile}, {lay.data_parallel} copies of "
        f"{plan.served_model_name} (tensor parallel {lay.tensor_parallel}) on {lay.nodes} nodes "
        f"of {lay.gpus_per_node} GPUs ({lay.local} copies per node).",
        fit,
        "",
        "mp (vLLM's own): on node 0 run node-0.sh, on node N run node-N.sh, all with "
        "HEAD_IP set to node 0's address;",
        f"  TCP {RPC_PORT} and the engines' ZMQ ports must be open between the nodes.",
        "Ray: ray-head.sh on node 0, ray-worker.sh on the others, then ray-serve.sh on node 0.",
        f"The endpoint is node 0's: {plan.openai_base_url} (with --host for other machines).",
        "",
    ]
    files["README.txt"] = "\n".join(readme)
    _, secrets = public_env(plan.env)
    instructions = [f"{lay.nodes} nodes; {fit}"]
    if secrets:
        instructions.append(f"export {' '.join(s + '=...' for s in secrets)} on every node")
    return Export(files, instructions)
