"""Profiles: what hardware, which model variant, how to serve it.

A profile is YAML validated by pydantic (unknown keys rejected). Profiles come from three places,
searched in this order: an explicit path, the user config dir, the ones shipped with msmall.
``extends: NAME`` inherits another profile and overrides it key by key; ``--set key=value``
overrides single settings on the command line.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from msmall import paths
from msmall.backends import backend_names
from msmall.errors import ConfigError
from msmall.models import DEFAULT_MODEL, MODELS, get_model, max_context_any

# Every model msmall knows has 8 KV heads: the tensor parallel sizes that split them evenly. The
# profile's own model is checked again once it is known (Profile._consistent).
_DEFAULT_SPEC = MODELS[DEFAULT_MODEL]


class _Strict(BaseModel):
    # allow_inf_nan=False: `.inf` would pass `ge=0` and print as `Infinity`, which is not JSON.
    # coerce_numbers_to_str: YAML reads `NCCL_P2P_DISABLE: 1` or `extra_args: [--x, 8192]` (and
    # `--set serving.env.X=1`) as numbers; they are meant as strings.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, allow_inf_nan=False, coerce_numbers_to_str=True
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, v: Any, info: Any) -> Any:
        # pydantic's lax mode reads `port: true` as port 1 and `gpu_count: yes` as 1 GPU.
        if isinstance(v, bool):
            field = cls.model_fields.get(info.field_name)
            if field is not None and "bool" not in repr(field.annotation):
                raise ValueError("must be a value, not true/false")
        return v


class Hardware(_Strict):
    gpu_count: int = Field(1, ge=0, le=64, description="GPUs the profile needs")
    min_vram_gib: float = Field(0, ge=0, le=4096, description="minimum memory per GPU")
    min_cuda: str | None = Field(None, description="minimum CUDA driver version, e.g. '12.1'")
    min_ram_gib: float = Field(0, ge=0, le=65536)
    min_disk_gib: float = Field(0, ge=0, le=1048576, description="free disk for the weights")
    # Which GPUs to use (indices or UUIDs); default all. Processes get CUDA_VISIBLE_DEVICES,
    # containers a DeviceRequest with these device ids.
    gpu_ids: list[str] | None = None

    @field_validator("gpu_ids", mode="before")
    @classmethod
    def _ids(cls, v: Any) -> Any:
        if v is None:
            return v
        if isinstance(v, (int, str)):
            v = [p for p in str(v).split(",") if p.strip()]
        if not isinstance(v, list) or not v:
            raise ValueError("must be a list of GPU indices or UUIDs, e.g. [0, 1]")
        ids = [str(i).strip() for i in v]
        for i in ids:
            if not (i.isdigit() or i.startswith(("GPU-", "MIG-"))):
                raise ValueError(f"'{i}' is neither a GPU index nor a GPU-/MIG- UUID")
        return ids

    @field_validator("min_cuda", mode="before")
    @classmethod
    def _cuda(cls, v: Any) -> Any:
        if v is None:
            return v
        v = str(v)
        if not re.fullmatch(r"\d+\.\d+", v):
            raise ValueError("must look like '12.1'")
        return v


class ModelVariant(_Strict):
    # Which model (models.py); the defaults below come from its record.
    id: str = DEFAULT_MODEL
    ollama_tag: str = ""
    hf_repo: str = ""
    # "mistral": the repo ships consolidated.safetensors + params.json + tekken.json, so vLLM gets the
    # Mistral format flags. "hf": HF shards only (every RedHatAI quantized repo); the Mistral load and
    # config formats would find no weights there. Default: what the model record knows of the repo,
    # else "hf" (vLLM >= 0.12 detects Mistral files by itself; the flags on an HF repo are fatal).
    hf_format: Literal["mistral", "hf"] | None = None
    # Weight precision of hf_repo, used by the memory-fit model.
    weights: Literal["bf16", "fp8", "w4a16", "awq"] = "bf16"

    @field_validator("id")
    @classmethod
    def _known_model(cls, v: str) -> str:
        if v not in MODELS:
            raise ValueError(f"must be one of: {', '.join(MODELS)}")
        return v

    @model_validator(mode="after")
    def _from_record(self) -> ModelVariant:
        spec = get_model(self.id)
        # object.__setattr__: validate_assignment would re-run this validator.
        if not self.hf_repo:
            object.__setattr__(self, "hf_repo", spec.official_repo)
        if not self.ollama_tag:
            object.__setattr__(self, "ollama_tag", spec.default_ollama_tag)
        if self.hf_format is None:
            object.__setattr__(self, "hf_format", spec.hf_format(self.hf_repo))
        for other in MODELS.values():
            if other.id != spec.id and self.hf_repo in other.hf_repos.values():
                raise ValueError(
                    f"hf_repo {self.hf_repo} holds {other.display_name}, but model.id is "
                    f"{spec.id}: set model.id: {other.id}, or a {spec.display_name} repo"
                )
        return self


class Serving(_Strict):
    max_model_len: int | Literal["auto"] = 32768
    gpu_memory_utilization: float = 0.92
    tensor_parallel_size: int = 1
    # vLLM data parallelism: this many copies of the model (each on tensor_parallel_size GPUs)
    # behind one endpoint. On one machine `serve` passes --data-parallel-size; across machines
    # `msmall export multinode` writes each node's command (hardware.gpu_count GPUs per node).
    data_parallel_size: int = Field(1, ge=1, le=64)
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = "auto"
    max_num_seqs: int = Field(16, ge=1, le=4096)
    # Ollama gives every parallel slot a full context of KV cache, so it has its own, smaller knob.
    ollama_num_parallel: int = Field(1, ge=1, le=64)
    vision: bool = True
    images_per_prompt: int = Field(4, ge=0, le=256)
    tools: bool = True
    # Default: the model record's name (mistral-small-3.1).
    served_model_name: str = ""
    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=1, le=65535, description="default: the backend's own")
    extra_args: list[str] = Field(default_factory=list, description="more vLLM flags, checked")
    env: dict[str, str] = Field(
        default_factory=dict, description="extra environment for the server"
    )

    @field_validator("max_model_len", mode="before")
    @classmethod
    def _max_len(cls, v: Any) -> Any:
        # vLLM's own spelling: 32k = 32000, 32K = 32768; -1 = auto.
        if v == -1 and not isinstance(v, bool):
            return "auto"
        if isinstance(v, str):
            s = v.strip()
            if s.lower() == "auto" or s == "-1":
                return "auto"
            mult = {"k": 1000, "K": 1024}.get(s[-1:])
            if mult and s[:-1].isdigit():
                return int(s[:-1]) * mult
            if s.isdigit():
                return int(s)
            raise ValueError("must be a number of tokens (32768, 32k, 32K) or 'auto'")
        return v

    @field_validator("max_model_len")
    @classmethod
    def _max_len_range(cls, v: Any) -> Any:
        if isinstance(v, int) and not (256 <= v <= max_context_any()):
            raise ValueError(
                f"must be between 256 and {max_context_any()} (the model's trained context; "
                f"got {v})"
            )
        return v

    @field_validator("gpu_memory_utilization")
    @classmethod
    def _util(cls, v: float) -> float:
        if not (0 < v <= 1):
            raise ValueError("must be in (0, 1], e.g. 0.92")
        return v

    @field_validator("tensor_parallel_size")
    @classmethod
    def _tp(cls, v: int) -> int:
        if v not in _DEFAULT_SPEC.valid_tensor_parallel:
            raise ValueError(
                f"must divide the model's {_DEFAULT_SPEC.num_kv_heads} KV heads: one of "
                + ", ".join(map(str, _DEFAULT_SPEC.valid_tensor_parallel))
            )
        return v


class Profile(_Strict):
    name: str
    description: str = ""
    extends: str | None = None
    backend: str = "vllm"
    hardware: Hardware = Field(default_factory=Hardware)
    model: ModelVariant = Field(default_factory=ModelVariant)
    serving: Serving = Field(default_factory=Serving)
    # Where the profile came from; not part of the YAML.
    source: str = Field("", exclude=True)

    @field_validator("backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        names = backend_names()
        if v not in names:
            raise ValueError(f"must be one of: {', '.join(names)} (got {v!r})")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        hw, sv = self.hardware, self.serving
        spec = get_model(self.model.id)
        if not sv.served_model_name:
            object.__setattr__(sv, "served_model_name", spec.served_model_name)
        if isinstance(sv.max_model_len, int) and sv.max_model_len > spec.max_context:
            raise ValueError(
                f"serving.max_model_len {sv.max_model_len} is beyond {spec.display_name}'s "
                f"trained context ({spec.max_context})"
            )
        if sv.tensor_parallel_size not in spec.valid_tensor_parallel:
            raise ValueError(
                f"serving.tensor_parallel_size must divide {spec.display_name}'s "
                f"{spec.num_kv_heads} KV heads"
            )
        if hw.gpu_ids is not None and len(hw.gpu_ids) < sv.tensor_parallel_size:
            raise ValueError(
                f"hardware.gpu_ids lists {len(hw.gpu_ids)} GPU(s) but "
                f"serving.tensor_parallel_size is {sv.tensor_parallel_size}"
            )
        if hw.gpu_count and sv.tensor_parallel_size > hw.gpu_count:
            raise ValueError(
                f"serving.tensor_parallel_size {sv.tensor_parallel_size} needs more GPUs than "
                f"hardware.gpu_count {hw.gpu_count}"
            )
        return self

    def port_for(self, backend: str) -> int:
        from msmall.backends import default_port

        return self.serving.port or default_port(backend)


# ---------------------------------------------------------------------------------------------
# Loading


class _ProfileLoader(yaml.SafeLoader):
    """SafeLoader that keeps date-like scalars as strings: no profile value is a date, and an
    impossible one (``2024-13-45``) made PyYAML raise a bare ValueError."""


_ProfileLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class _FastProfileLoader(getattr(yaml, "CSafeLoader", _ProfileLoader)):  # type: ignore[misc]
    """The same loader on libyaml's parser where PyYAML was built with it (the PyPI wheels
    are): the pure-Python parser spent ~40 ms a profile, and `recommend` reads all of them.
    A file it refuses is parsed again by the Python one, so the error text is the same with or
    without libyaml."""

    yaml_implicit_resolvers = _ProfileLoader.yaml_implicit_resolvers


# A profile is a page of YAML: a bigger file is not one (and /dev/zero never ends).
MAX_PROFILE_BYTES = 256 * 1024
# Nodes after alias expansion. Shipped profiles have about 60; "billion laughs" aliases under
# 1 KB expand to 10^9 and took minutes and gigabytes in pydantic and json.
MAX_PROFILE_NODES = 20_000


def _yaml_lines(root: yaml.Node | None, where: Path) -> dict[tuple[str, ...], int]:
    """Map each key path to its 1-based line, for error messages. Refuses what YAML allows but a
    profile must not hold: duplicate keys (PyYAML keeps the last one silently), recursive
    aliases, and aliases that expand beyond MAX_PROFILE_NODES."""
    lines: dict[tuple[str, ...], int] = {}
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: yaml.Node) -> int:
        # Memoised by node: an alias is the same node object, so this is linear in the file
        # and still counts what the expansion would build.
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in on_path:
            line = node.start_mark.line + 1
            raise ConfigError(f"{where}:{line}: recursive YAML alias (it contains itself)")
        on_path.add(id(node))
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        on_path.discard(id(node))
        sizes[id(node)] = total
        if total > MAX_PROFILE_NODES:
            raise ConfigError(
                f"{where}: more than {MAX_PROFILE_NODES} values (each use of a YAML alias "
                "counts its whole value)",
                "A profile needs a few dozen settings; remove the repeated aliases or lists.",
            )
        return total

    def walk(node: yaml.Node, prefix: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in node.value:
                name = str(key.value)
                line = key.start_mark.line + 1
                if name in seen and name != "<<":
                    raise ConfigError(
                        f"{where}:{line}: duplicate key '{'.'.join((*prefix, name))}' "
                        f"(first on line {seen[name]})",
                        "Keep one of them: YAML would silently use the last.",
                    )
                seen[name] = line
                path = (*prefix, name)
                lines.setdefault(path, line)
                walk(value, path)

    if root is not None:
        size(root)
        walk(root, ())
    return lines


def _read_text_bounded(path: Path) -> tuple[str, tuple[int, int, int]]:
    """A regular file's text, at most MAX_PROFILE_BYTES, and its (inode, size, mtime) stamp;
    FIFOs and devices are refused before anything is read (opening a FIFO without O_NONBLOCK
    waits for a writer forever)."""
    import os
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(f"profile file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read profile {path}: {exc.strerror or exc}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ConfigError(
            f"{path} is not a regular file",
            "A profile is a .yaml file; pass its path or its name.",
        )
    with os.fdopen(fd, "rb") as fh:
        if st.st_size > MAX_PROFILE_BYTES:
            raise ConfigError(
                f"{path} is {st.st_size} bytes: too large for a profile "
                f"(at most {MAX_PROFILE_BYTES // 1024} KiB)"
            )
        try:
            data = fh.read(MAX_PROFILE_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read profile {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_PROFILE_BYTES:
        raise ConfigError(f"{path}: too large for a profile")
    try:
        return data.decode("utf-8"), (st.st_ino, st.st_size, st.st_mtime_ns)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read profile {path}: not UTF-8 text ({exc.reason})") from None


# Parsed files by (path, inode, size, mtime): one `serve` or `doctor` reads each profile several
# times (the named one, every one for `recommend`, `extends` parents). A copy is handed out, so
# a caller that edits its dict never changes the next caller's.
_PARSED: dict[tuple[str, int, int, int], tuple[dict[str, Any], dict[tuple[str, ...], int]]] = {}


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    import copy

    text, stamp = _read_text_bounded(path)
    key = (str(path), *stamp)
    if key not in _PARSED:
        if len(_PARSED) > 256:
            _PARSED.clear()
        _PARSED[key] = _parse_yaml(text, path)
    data, lines = _PARSED[key]
    return copy.deepcopy(data), dict(lines)


def _compose_and_build(text: str, path: Path, loader_class: type) -> tuple[Any, dict]:
    # Compose first: the node graph is checked (duplicates, alias expansion) before any Python
    # object is built from it, then built from those same nodes (one parse).
    loader = loader_class(text)
    try:
        root = loader.get_single_node()
        lines = _yaml_lines(root, path)
        return (loader.construct_document(root) if root is not None else None), lines
    finally:
        loader.dispose()


def _parse_yaml(text: str, path: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    try:
        try:
            data, lines = _compose_and_build(text, path, _FastProfileLoader)
        except yaml.YAMLError:
            if not hasattr(yaml, "CSafeLoader"):
                raise  # the Python parser already refused it
            data, lines = _compose_and_build(text, path, _ProfileLoader)
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply") from None
    except ValueError as exc:
        # An explicit tag the constructor cannot build, e.g. `!!timestamp 2024-13-45`.
        raise ConfigError(f"{path}: malformed YAML: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and context_mark and (not mark or context_mark.line != mark.line):
            # An unclosed quote fails at the end of the file; say where it was opened.
            problem += f" ({context} started on line {context_mark.line + 1})"
        raise ConfigError(
            f"{where}: malformed YAML: {problem}",
            "Fix the YAML syntax (indentation, quotes, ':' after each key).",
        ) from None
    if data is None:
        # An empty file (or only comments) is a mistake, not "all defaults".
        raise ConfigError(
            f"{path}: profile file is empty",
            "Start from `msmall profiles show 4090-q4` and edit it.",
        )
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a profile must be a YAML mapping of keys, not {type(data).__name__}",
            "Start from `msmall profiles show 4090-q4` and edit it.",
        )
    return data, lines


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _format_validation(exc: ValidationError, where: str, places: dict[tuple[str, ...], str]) -> str:
    err = exc.errors()[0]
    loc = tuple(str(p) for p in err["loc"])
    key = ".".join(loc) or "profile"
    # The file and line that set the value: a parent's, for a value inherited through `extends`
    # (the user must edit that file, not the one they loaded).
    place = places.get(loc) or where
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{place}: unknown key '{key}'"
    if kind == "missing":
        return f"{place}: missing key '{key}'"
    msg = err["msg"]
    msg = re.sub(r"^Value error, ", "", msg)
    bounds = _bounds(loc)
    if kind in ("less_than_equal", "greater_than_equal", "less_than", "greater_than") and bounds:
        msg = f"must be between {bounds[0]} and {bounds[1]} (got {err.get('input')!r})"
    if kind == "literal_error":
        return f"{place}: '{key}' {msg[0].lower()}{msg[1:]} (got {err.get('input')!r})"
    extra = "" if len(exc.errors()) == 1 else f" (and {len(exc.errors()) - 1} more)"
    return f"{place}: '{key}' {msg[0].lower()}{msg[1:]}{extra}" if loc else f"{place}: {msg}"


def _bounds(loc: tuple[str, ...]) -> tuple[Any, Any] | None:
    """(ge, le) of the field at loc, for "must be between" messages."""
    model: Any = Profile
    field = None
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        model = field.annotation
    lo = hi = None
    for meta in field.metadata if field is not None else []:
        lo = getattr(meta, "ge", lo)
        hi = getattr(meta, "le", hi)
    return (lo, hi) if lo is not None and hi is not None else None


def _known_profile_files(skip: Path | None = None) -> dict[str, Path]:
    """Name -> file, user profiles shadowing built-in ones.

    ``skip``: a resolved file left out, so that a user profile named like a shipped one can
    ``extends:`` the shipped one instead of itself.
    """
    found: dict[str, Path] = {}
    for folder in (paths.builtin_profiles_dir(), paths.user_profiles_dir()):
        if folder.is_dir():
            for f in sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml")):
                if skip is not None and f.resolve() == skip:
                    continue
                found[f.stem] = f
    return found


def profile_names() -> list[str]:
    return sorted(_known_profile_files())


def _looks_like_path(ref: str) -> bool:
    return ref.endswith((".yaml", ".yml")) or "/" in ref or ref.startswith(".")


def _locate(ref: str, relative_to: Path | None = None, skip: Path | None = None) -> Path:
    if _looks_like_path(ref):
        p = Path(ref).expanduser()
        # An `extends:` path is relative to the file that says it, whatever the working dir.
        if not p.is_absolute() and relative_to is not None and (relative_to / p).exists():
            p = relative_to / p
        return p
    known = _known_profile_files(skip)
    if ref in known:
        return known[ref]
    names = sorted(known)
    close = difflib.get_close_matches(ref, names, n=1, cutoff=0.4)
    hint = f"Did you mean '{close[0]}'? " if close else ""
    raise ConfigError(
        f"unknown profile '{ref}'. Known profiles: {', '.join(names)}",
        f"{hint}Or pass a file: --profile ./my-profile.yaml",
    )


def _load_raw(
    ref: str, relative_to: Path | None, chain: tuple[str, ...], skip: Path | None = None
) -> dict[str, Any]:
    path = _locate(ref, relative_to, skip)
    key = str(path.resolve()) if path.exists() else str(path)
    if key in chain:
        raise ConfigError(f"{path}: 'extends' makes a cycle: {' -> '.join([*chain, key])}")
    data, lines = _read_yaml(path)
    places = {loc: f"{path}:{line}" for loc, line in lines.items()}
    data.setdefault("name", path.stem)
    parent_ref = data.get("extends")
    if parent_ref is not None:
        if not isinstance(parent_ref, str):
            raise ConfigError(f"{path}: 'extends' must be a profile name or a file path")
        try:
            parent = _load_raw(parent_ref, path.parent, (*chain, key), skip=path.resolve())
        except ConfigError as exc:
            if exc.message.startswith("unknown profile"):
                raise ConfigError(f"{path}: extends: {exc.message}", exc.fix) from None
            raise
        parent.pop("description", None)
        # This file's keys win, as in the merge; the rest were set by the parent chain.
        places = {**parent.pop("_places"), **places}
        data = _deep_merge(parent, data)
    data["_source"] = str(path)
    data["_places"] = places
    return data


def _validate(data: dict[str, Any]) -> Profile:
    data = dict(data)
    source = data.pop("_source", "<profile>")
    places = data.pop("_places", {})
    try:
        prof = Profile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            _format_validation(exc, source, places),
            "See `msmall profiles show 4090-q4` for a valid profile.",
        ) from None
    prof.source = source
    return prof


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``["max_model_len=16384", "serving.vision=false"]`` -> nested override dict."""
    section_of = {
        name: section
        for section, model_cls in (
            ("hardware", Hardware),
            ("model", ModelVariant),
            ("serving", Serving),
        )
        for name in model_cls.model_fields
        if name != "id"
    }
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"--set expects key=value, got '{item}'", "Example: --set max_model_len=16384"
            )
        parts = key.split(".")
        if len(parts) == 1:
            # extends is resolved before --set applies and source is not a setting: refuse both.
            if key in Profile.model_fields and key not in (
                "hardware",
                "model",
                "serving",
                "extends",
                "source",
            ):
                parts = [key]
            elif key in section_of:
                parts = [section_of[key], key]
            else:
                close = difflib.get_close_matches(key, list(section_of), n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"--set: unknown setting '{key}'.{hint}")
        try:
            if raw.strip():
                _yaml_lines(yaml.compose(raw, Loader=_ProfileLoader), Path(f"--set {key}"))
            value = yaml.load(raw, Loader=_ProfileLoader) if raw.strip() else ""
        except (yaml.YAMLError, ValueError, RecursionError):
            value = raw
        # "32k" and friends stay strings; YAML turns "1e3" into a str too, pydantic decides.
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set: '{key}' conflicts with another --set")
        node[parts[-1]] = value
    return out


def load_profile(ref: str, overrides: dict[str, Any] | None = None) -> Profile:
    """Load a profile by name or path, resolve ``extends`` and apply ``--set`` overrides."""
    data = _load_raw(ref, None, ())
    if overrides:
        source = data.pop("_source")
        # A value --set replaced has no file line any more; the others keep theirs.
        set_paths = list(_leaf_paths(overrides))
        data["_places"] = {
            loc: place
            for loc, place in data["_places"].items()
            if not any(loc[: len(p)] == p for p in set_paths)
        }
        data = _deep_merge(data, overrides)
        data["_source"] = f"{source} (with --set)"
    return _validate(data)


def _leaf_paths(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _leaf_paths(value, (*prefix, key))
        else:
            yield (*prefix, key)


def load_all() -> list[Profile | ConfigError]:
    """Every known profile; a broken user profile comes back as its error, not a crash."""
    out: list[Profile | ConfigError] = []
    for name in profile_names():
        try:
            out.append(load_profile(name))
        except ConfigError as exc:
            out.append(exc)
        except (RecursionError, ValueError, TypeError, OSError, MemoryError) as exc:
            # Whatever a hostile file does, one profile never takes the listing down.
            out.append(ConfigError(f"profile '{name}' cannot be loaded: {type(exc).__name__}"))
    return out


def validate_file(path: str) -> Profile:
    return load_profile(path if _looks_like_path(path) else f"./{path}")


def profile_to_dict(prof: Profile) -> dict[str, Any]:
    """JSON-ready, secrets redacted (a profile may carry HF_TOKEN in env or --api-key in extra_args)."""
    from msmall.plan import redact_argv, redact_env

    data = prof.model_dump(mode="json", exclude={"extends"})
    data["serving"]["env"] = redact_env(data["serving"]["env"])
    data["serving"]["extra_args"] = redact_argv(data["serving"]["extra_args"])
    data["source"] = prof.source
    return data
