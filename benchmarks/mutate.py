"""Mutation testing for one msmall module (a local audit tool, not part of CI).

Makes one small change at a time to the module's AST (a comparison operator, a constant, a
boolean, a return value), runs the given tests against the changed copy, and counts the change as
killed when the tests fail (or time out) and as a survivor when they pass. Survivors are the
places where a bug could hide from the suite.

    python benchmarks/mutate.py src/msmall/health.py tests/unit/test_readiness.py \
        [--max 60] [--seed 1] [--timeout 120] [--json out.json] [-k EXPR]

The original tree is never touched: the repository (without .git and .venv) is copied to a
temporary directory, the mutant is written there and that copy's src/ is put first on PYTHONPATH,
so subprocesses the tests start (python -m msmall, the fake engines) import the mutant too.

Mutants on lines that only carry message text (log calls, exception messages, f-strings, strings
with spaces) are skipped by default: changing a word in a sentence is not a behaviour change a
test should pin (--keep-messages counts them anyway).
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

COMPARE_SWAPS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
OP_TEXT = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.In: "in",
    ast.NotIn: "not in",
    ast.Is: "is",
    ast.IsNot: "is not",
}
# The pytest plugins the suite relies on (pytest-timeout's ini option, respx's fixture, anyio's
# marker, hypothesis's settings); loaded by name with autoload off.
SUITE_PLUGINS = (
    "pytest_timeout",
    "respx.plugin",
    "anyio.pytest_plugin",
    "_hypothesis_pytestplugin",
)
# Calls whose arguments are text for a person, not behaviour.
MESSAGE_CALLS = {
    "print", "echo", "log", "debug", "info", "warning", "warn", "error", "exception",
    "critical", "stage", "note", "detail", "write", "secho", "add_row", "add_column",
}  # fmt: skip


@dataclass
class Mutant:
    index: int
    line: int
    col: int
    kind: str
    description: str
    status: str = "pending"  # killed | survived | timeout | pending
    seconds: float = 0.0


def _call_name(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return ""


def _is_exception_name(name: str) -> bool:
    return name.endswith(("Error", "Exception", "Unhealthy", "Problem", "Unavailable", "Failed"))


class _Annotator(ast.NodeVisitor):
    """Marks nodes that sit in message text: docstrings, f-strings, log and exception arguments."""

    def __init__(self) -> None:
        self.message_nodes: set[int] = set()

    def _mark(self, node: ast.AST) -> None:
        for sub in ast.walk(node):
            self.message_nodes.add(id(sub))

    def generic_visit(self, node: ast.AST) -> None:
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            self._mark(body[0])
        if isinstance(node, ast.JoinedStr):
            self._mark(node)
        # Annotations are never evaluated here (from __future__ import annotations).
        for attr in ("annotation", "returns"):
            sub = getattr(node, attr, None)
            if isinstance(sub, ast.AST):
                self._mark(sub)
        if isinstance(node, ast.Call):
            name = _call_name(node)
            if name in MESSAGE_CALLS or _is_exception_name(name):
                for arg in [*node.args, *(k.value for k in node.keywords)]:
                    self._mark(arg)
        super().generic_visit(node)


def _message_string(value: object) -> bool:
    return isinstance(value, str) and (any(c.isspace() for c in value) or len(value) > 60)


def find_mutants(tree: ast.Module, keep_messages: bool) -> list[tuple[Mutant, list[int]]]:
    """Every mutation site, as (mutant, path of child indexes to the node)."""
    annotator = _Annotator()
    annotator.visit(tree)
    found: list[tuple[Mutant, list[int]]] = []

    def add(node: ast.AST, kind: str, description: str, key: int) -> None:
        line = getattr(node, "lineno", 0)
        col = getattr(node, "col_offset", 0)
        found.append((Mutant(len(found), line, col, kind, description), [key]))

    # Nodes are addressed by their position in a deterministic ast.walk order.
    for position, node in enumerate(ast.walk(tree)):
        in_message = id(node) in annotator.message_nodes
        if in_message and not keep_messages:
            continue
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                swap = COMPARE_SWAPS.get(type(op))
                if swap:
                    add(
                        node,
                        "compare",
                        f"{OP_TEXT[type(op)]} -> {OP_TEXT[swap]}",
                        position * 100 + i,
                    )
        elif isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool):
                add(node, "boolean", f"{value} -> {not value}", position * 100)
            elif isinstance(value, int):
                add(node, "constant", f"{value} -> {value + 1}", position * 100)
            elif isinstance(value, float):
                add(node, "constant", f"{value} -> {_float_mutant(value)}", position * 100)
            elif isinstance(value, str) and value and (keep_messages or not _message_string(value)):
                add(node, "constant", f"{value!r} -> {value + 'XX'!r}", position * 100)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            add(node, "boolean", "not x -> x", position * 100)
        elif isinstance(node, ast.BoolOp):
            other = "or" if isinstance(node.op, ast.And) else "and"
            this = "and" if other == "or" else "or"
            add(node, "boolean", f"{this} -> {other}", position * 100)
        elif isinstance(node, ast.Return) and not (
            node.value is None
            or (isinstance(node.value, ast.Constant) and node.value.value is None)
        ):
            add(node, "return", f"return {_short(node.value)} -> return None", position * 100)
    found.sort(key=lambda item: (item[0].line, item[0].col, item[1][0]))
    for index, (mutant, _) in enumerate(found):
        mutant.index = index
    return found


def _line_range(text: str) -> tuple[int, int]:
    lo, _, hi = text.strip().partition("-")
    return int(lo), int(hi or lo)


def _float_mutant(value: float) -> float:
    return round(value * 1.1, 6) if value else 0.1


def _short(node: ast.AST) -> str:
    text = ast.unparse(node)
    return text if len(text) <= 40 else text[:37] + "..."


def apply_mutant(tree: ast.Module, key: int) -> ast.Module:
    """A copy of `tree` with the mutation `key` (position * 100 + operator index) applied."""
    position, op_index = divmod(key, 100)
    new = copy.deepcopy(tree)
    for pos, node in enumerate(ast.walk(new)):
        if pos != position:
            continue
        if isinstance(node, ast.Compare):
            node.ops[op_index] = COMPARE_SWAPS[type(node.ops[op_index])]()
        elif isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool):
                node.value = not value
            elif isinstance(value, int):
                node.value = value + 1
            elif isinstance(value, float):
                node.value = _float_mutant(value)
            elif isinstance(value, str):
                node.value = value + "XX"
        elif isinstance(node, ast.UnaryOp):
            return _replace(new, node, node.operand)
        elif isinstance(node, ast.BoolOp):
            node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        elif isinstance(node, ast.Return):
            node.value = ast.Constant(None)
        return ast.fix_missing_locations(new)
    raise KeyError(key)


def _replace(tree: ast.Module, old: ast.AST, new_node: ast.AST) -> ast.Module:
    class Swap(ast.NodeTransformer):
        def visit(self, node: ast.AST) -> ast.AST:
            if node is old:
                return new_node
            return super().visit(node)

    return ast.fix_missing_locations(Swap().visit(tree))


def copy_repo(dest: Path, rev: str | None = None) -> None:
    if rev:
        # The tree of one commit, e.g. to measure the suite as it was before new tests.
        archive = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "archive", rev], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", "*.egg-info"
    )
    shutil.copytree(REPO_ROOT, dest, ignore=ignore, dirs_exist_ok=True)


def run_tests(
    workdir: Path, tests: list[str], timeout: float, extra: list[str]
) -> tuple[str, float]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(workdir / "src") + os.pathsep + env.get("PYTHONPATH", "")
    # No stale bytecode: the mutant and the original can share a size and an mtime second.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    # Only the plugins the suite uses: autoloading every installed one (langsmith, pulled in by
    # the litellm/langchain test extras, costs about 6 s of imports) made each mutant's run
    # mostly pytest start-up on a loaded machine.
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    plugins = [arg for name in SUITE_PLUGINS for arg in ("-p", name)]
    argv = [
        sys.executable, "-m", "pytest", "-x", "-q", "--no-header", "-p", "no:cacheprovider",
        *plugins, *extra, *tests,
    ]  # fmt: skip
    start = time.monotonic()
    # Its own process group, so a timeout (or our own end) can stop everything the tests
    # started, servers included, not just pytest.
    proc = subprocess.Popen(
        argv,
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return "timeout", time.monotonic() - start
    except BaseException:
        _kill_group(proc)
        raise
    return ("survived" if code == 0 else "killed"), time.monotonic() - start


def _kill_group(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("module", help="module to mutate, e.g. src/msmall/health.py")
    parser.add_argument("tests", nargs="+", help="test files or node ids to run per mutant")
    parser.add_argument("--max", type=int, default=0, help="mutate at most N sites (sampled)")
    parser.add_argument("--seed", type=int, default=1, help="sampling seed (default 1)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per mutant")
    parser.add_argument("--keep-messages", action="store_true", help="mutate message text too")
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    parser.add_argument("--json", type=Path, help="write the full result here")
    parser.add_argument("--rev", help="mutate the tree of this git commit instead of the work tree")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression for every run")
    parser.add_argument(
        "--rerun",
        type=Path,
        help="a --json result of the same module, seed and --max: keep its killed mutants as "
        "killed and run only its survivors (valid when tests were only added since)",
    )
    parser.add_argument(
        "--lines",
        help="only mutate these line ranges, e.g. 120-180,300-340 (the part of a module under audit)",
    )
    args = parser.parse_args(argv)
    import signal

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)

    module = Path(args.module).resolve()
    rel = module.relative_to(REPO_ROOT)
    if args.rev:
        source = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "show", f"{args.rev}:{rel.as_posix()}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    else:
        source = module.read_text(encoding="utf-8")
    tree = ast.parse(source)
    sites = find_mutants(tree, args.keep_messages)
    if args.lines:
        ranges = [_line_range(part) for part in args.lines.split(",") if part.strip()]
        sites = [s for s in sites if any(lo <= s[0].line <= hi for lo, hi in ranges)]
    if args.max and len(sites) > args.max:
        sites = sorted(random.Random(args.seed).sample(sites, args.max), key=lambda s: s[0].index)
    lines = source.splitlines()
    if args.list:
        for mutant, _ in sites:
            print(f"{rel}:{mutant.line}: {mutant.kind}: {mutant.description}")
        print(f"{len(sites)} mutants", file=sys.stderr)
        return 0

    previous: dict[int, str] = {}
    if args.rerun:
        old = json.loads(args.rerun.read_text(encoding="utf-8"))
        mine = {(m.index, m.line, m.description) for m, _ in sites}
        theirs = {(r["index"], r["line"], r["description"]) for r in old["results"]}
        if old["module"] != str(rel) or mine != theirs:
            print(f"{args.rerun} is not a run of the same mutants of {rel}; stopping")
            return 2
        previous = {r["index"]: r["status"] for r in old["results"]}
    extra = ["-k", args.keyword] if args.keyword else []
    with tempfile.TemporaryDirectory(prefix="msmall-mutate-") as tmp:
        work = Path(tmp)
        copy_repo(work, args.rev)
        target = work / rel
        status, seconds = run_tests(work, args.tests, args.timeout * 3, extra)
        if status != "survived":
            print(f"the tests do not pass on the unmutated module ({status}); stopping")
            return 2
        print(f"{rel}: {len(sites)} mutants; unmutated run {seconds:.1f} s", flush=True)
        try:
            for n, (mutant, path) in enumerate(sites, 1):
                if previous.get(mutant.index) in ("killed", "timeout"):
                    # More tests cannot let a killed mutant survive: not run again.
                    mutant.status = previous[mutant.index]
                    continue
                mutated = apply_mutant(tree, path[0])
                target.write_text(ast.unparse(mutated) + "\n", encoding="utf-8")
                mutant.status, mutant.seconds = run_tests(work, args.tests, args.timeout, extra)
                mark = {"killed": ".", "timeout": "T", "survived": "S"}[mutant.status]
                print(
                    f"[{n}/{len(sites)}] {mark} {rel}:{mutant.line} {mutant.description}"
                    f" ({mutant.seconds:.1f} s)",
                    flush=True,
                )
        finally:
            target.write_text(source, encoding="utf-8")

    done = [m for m, _ in sites if m.status != "pending"]
    killed = [m for m in done if m.status in ("killed", "timeout")]
    survivors = [m for m in done if m.status == "survived"]
    rate = 100.0 * len(killed) / len(done) if done else 0.0
    print(f"\n{rel}: {len(killed)}/{len(done)} killed ({rate:.0f} %), {len(survivors)} survived")
    for m in survivors:
        text = lines[m.line - 1].strip() if 0 < m.line <= len(lines) else ""
        print(f"  SURVIVED {rel}:{m.line}: {m.description}    | {text[:90]}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "module": str(rel),
                    "tests": args.tests,
                    "seed": args.seed,
                    "lines": args.lines,
                    "rerun_of": str(args.rerun) if args.rerun else None,
                    "mutants": len(done),
                    "killed": len(killed),
                    "kill_rate": round(rate, 1),
                    "results": [asdict(m) for m in done],
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
