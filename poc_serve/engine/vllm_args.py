"""The body of ``POST /api/v1/inference/up`` (ml-node spec 2.4) as an engine configuration.

The network's node software (the DAPI) sends ``{"model", "dtype", "additional_args"}``, where
``additional_args`` are ``vllm serve`` command-line arguments (the chain's model args, then the
node config's). The reference ML node starts ``vllm serve --model <model> --dtype <dtype>
<additional_args>``; :func:`parse_inference_up` reads the same list with vLLM's own parser (its
``make_arg_parser``: engine and OpenAI-frontend options, so spelling, abbreviations, ``-tp``,
``key=value`` and ``--json.key`` forms and value checks are exactly vLLM's) and maps what the
arguments *name* onto :class:`EngineConfig`. What they do not name keeps the deployment's value
(``base``), so the PoC settings, the executor and the memory checks of serve_config.yaml stay.

What each argument becomes:

- engine layout and limits with an :class:`EngineConfig` field of their own
  (:data:`ENGINE_FIELDS`: tensor/pipeline parallel size, max model length, max batched tokens,
  GPU memory share, dtype, seed, enforce eager, executor backend, skip tokenizer init) go there;
- every other engine argument vLLM knows (``--quantization``, ``--kv-cache-dtype``,
  ``--max-num-seqs``, ``--enable-expert-parallel``, ``--revision``, ...) goes to
  ``EngineConfig.engine_kwargs`` under vLLM's ``AsyncEngineArgs`` field name, over the base's;
- serving options: the served model name (``--served-model-name``, first name; the others are
  aliases; the ``model`` string when absent), ``--tool-call-parser`` and
  ``--enable-auto-tool-choice``, ``--reasoning-parser``. Parser names are checked against
  vLLM's registries. ``--reasoning-parser`` is *not* passed to the engine: vLLM 0.32's engine
  would build it for structured outputs at start, and some parsers refuse a tokenizer without
  their think tokens (the built-in random models); the node's own OpenAI layer applies it.

Refused, with :class:`InvalidArgumentError` naming the argument (decision: an argument this node
would silently drop is a surprise for the operator who wrote it, while the DAPI ignores the
answer's status code anyway, so refusing costs nothing there; the 400 and the log say why):

- every OpenAI-frontend option except the serving options above and :data:`IGNORED_ARGS`. The
  node's HTTP server is Ray Serve's (``--port``, ``--host``, ``--uds``, TLS, CORS, API keys,
  root path, middleware are serve_config.yaml's business) and its OpenAI layer is poc_serve's
  own (``--chat-template``, ``--response-role``, ``--lora-modules``, ... are not implemented);
- data parallelism (``--data-parallel-*``, ``-dp`` other than 1): this node's data parallelism
  is its Serve engine replicas (``num_replicas`` in serve_config.yaml);
- ``--headless``, ``--api-server-count``, ``--config`` (it would read a file named by the
  network), ``--worker-extension-cls`` (the node's PoC extension must stay),
  ``--tool-parser-plugin`` (would import a file), a ``--distributed-executor-backend`` other than
  ray, mp or uni, ``--max-model-len auto``/``-1`` (the PoC needs a fixed length), ``-h``/``--help``;
- a ``--model`` other than the body's ``model``, and a positional argument (the model tag).

Ignored, with the reason in :data:`IGNORED_ARGS`: logging-only frontend options
(``--uvicorn-log-level``, ``--disable-uvicorn-access-log``, ...), which change nothing a client sees.

``dtype`` is passed as ``--dtype`` before the additional arguments, as the reference does: a
``--dtype`` among them wins (vLLM's parser keeps the last). ``half``/``float`` become
``float16``/``float32``.

A model that cannot be found raises :class:`ModelNotFoundError` (see :func:`check_model_available`).

vLLM's parser reports errors through ``sys.exit``; here they become exceptions (the parser's
``error``/``exit`` raise, and a stray ``SystemExit`` is caught), so a bad list never ends the
process. vLLM 0.26 (the GPU build; not installed here, unverified): the parser comes from
``vllm.entrypoints.openai.cli_args`` there (see ``vllm_compat.serve_arg_parser``), its frontend
has fewer options (no ``--grpc``, ``--grpc-port``, ``--dp-supervisor-*``; those are then unknown
rather than refused, the same 400), ``--max-model-len`` may not accept ``auto``, and
``--reasoning-parser`` may be a frontend option rather than an engine field; the mapping reads
field names from ``AsyncEngineArgs`` at run time, so either works.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from poc_serve.engine.config import EngineConfig
from poc_serve.models.tiny import BUILTIN_MODELS

# AsyncEngineArgs field -> EngineConfig field (those the engine sets from the config itself;
# passing them in engine_kwargs too would give vLLM the keyword twice).
ENGINE_FIELDS = {
    "tensor_parallel_size": "tensor_parallel_size",
    "pipeline_parallel_size": "pipeline_parallel_size",
    "max_model_len": "max_model_len",
    "max_num_batched_tokens": "max_num_batched_tokens",
    "gpu_memory_utilization": "gpu_memory_utilization",
    "dtype": "dtype",
    "seed": "seed",
    "enforce_eager": "enforce_eager",
    "distributed_executor_backend": "distributed_executor_backend",
    "skip_tokenizer_init": "skip_tokenizer_init",
}
# Serving options: read here, never passed to the engine.
SERVING_ARGS = ("served_model_name", "tool_call_parser", "enable_auto_tool_choice", "reasoning_parser")
# Frontend options accepted and ignored, with why.
IGNORED_ARGS = {
    "uvicorn_log_level": "logging only: Ray Serve runs the HTTP server",
    "disable_uvicorn_access_log": "logging only: Ray Serve runs the HTTP server",
    "disable_access_log_for_endpoints": "logging only: Ray Serve runs the HTTP server",
    "disable_fastapi_docs": "the node's OpenAPI page is poc_serve's",
    "enable_log_outputs": "logging only",
    "enable_log_deltas": "logging only",
    "max_log_len": "logging only",
    "log_error_stack": "logging only",
}
# Engine options refused, with why (data_parallel_* as a group below).
REFUSED_ENGINE_ARGS = {
    "worker_extension_cls": "the node's PoC worker extension must stay",
    "model_weights": "weights come from the model named in the body",
}
DATA_PARALLEL_REASON = ("data parallelism is this node's Serve engine replicas (num_replicas in "
                        "serve_config.yaml), not vLLM's")
FRONTEND_REASON = ("not honoured by this node: its HTTP server is Ray Serve's and its OpenAI layer "
                   "poc_serve's own (set ports, hosts, TLS and CORS in serve_config.yaml)")
# vLLM's dtype spellings that EngineConfig names otherwise.
DTYPE_ALIASES = {"half": "float16", "float": "float32"}
_EXECUTORS = ("ray", "mp", "uni")


class ServingArgsError(ValueError):
    """An ``inference/up`` request this node refuses (the route answers 400); ``argument`` is the
    offending command-line flag or body field, when there is one."""

    def __init__(self, message: str, argument: str | None = None):
        super().__init__(message)
        self.argument = argument


class InvalidArgumentError(ServingArgsError):
    """An unknown, invalid or refused argument; the message names it."""


class ModelNotFoundError(ServingArgsError):
    """A model that is no built-in name, no local path and (offline) not in the Hugging Face cache."""

    def __init__(self, message: str, model: str):
        super().__init__(message, argument="model")
        self.model = model


class ServingRequest(BaseModel):
    """What ``inference/up`` asks this node to serve: the engine config, whose serving options
    (served names, tool-call and reasoning parsers) the OpenAI layer reads."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="The model as the request named it (governance id, path or built-in name).")
    engine: EngineConfig = Field(description="The engine configuration: the deployment's, with the arguments applied.")
    ignored_args: list[str] = Field(default_factory=list,
                                    description="Flags accepted but ignored (IGNORED_ARGS), for the log.")

    @property
    def served_model_name(self) -> str:
        """The id /v1/models lists first and requests name: the model unless --served-model-name."""
        return (self.engine.served_model_name or [self.model])[0]

    @property
    def served_model_aliases(self) -> list[str]:
        """Further --served-model-name values, also accepted."""
        return (self.engine.served_model_name or [])[1:]

    @property
    def tool_call_parser(self) -> str | None:
        return self.engine.tool_call_parser

    @property
    def enable_auto_tool_choice(self) -> bool:
        return self.engine.enable_auto_tool_choice

    @property
    def reasoning_parser(self) -> str | None:
        return self.engine.reasoning_parser

    def key(self) -> str:
        """A stable digest of everything that is served (engine and serving options; not the
        spelling of the arguments nor the ignored ones): equal keys mean "already served"."""
        payload = self.model_dump(exclude={"ignored_args"})
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=_jsonable)
        return hashlib.sha256(text.encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    """JSON form of the objects vLLM's parser makes (config dataclasses, pydantic models, enums, sets)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"__type__": type(value).__name__, **{f.name: getattr(value, f.name) for f in dataclasses.fields(value)}}
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if hasattr(value, "value") and hasattr(type(value), "__members__"):  # an Enum
        return value.value
    return repr(value)


class _Unset:
    """Marks a parser destination the arguments did not name."""

    def __repr__(self) -> str:
        return "<unset>"


_UNSET = _Unset()


class _ParseError(Exception):
    pass


_PARSER_CLASS: type | None = None


def _parser_class() -> type:
    """vLLM's FlexibleArgumentParser with error and exit raising instead of ending the process."""
    global _PARSER_CLASS
    if _PARSER_CLASS is None:
        from poc_serve.engine.vllm_compat import flexible_argument_parser

        class RaisingParser(flexible_argument_parser()):
            def error(self, message: str):  # type: ignore[override]
                raise _ParseError(message)

            def exit(self, status: int = 0, message: str | None = None):  # type: ignore[override]
                raise _ParseError((message or "").strip() or f"the parser exited with status {status}")

            def print_help(self, file: Any = None) -> None:  # an abbreviated --help
                raise _ParseError("help is not an argument to serve a model")

        _PARSER_CLASS = RaisingParser
    return _PARSER_CLASS


def _engine_arg_names() -> frozenset[str]:
    from poc_serve.engine.vllm_compat import AsyncEngineArgs

    return frozenset(f.name for f in dataclasses.fields(AsyncEngineArgs))


def _flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Destination -> the flag that names it in messages (the longest option string)."""
    names: dict[str, str] = {}
    for action in parser._actions:
        if action.option_strings:
            long = [o for o in action.option_strings if o.startswith("--") and not o.startswith("--no-")]
            names.setdefault(action.dest, long[0] if long else max(action.option_strings, key=len))
    return names


def _precheck(args: Sequence[str]) -> None:
    for arg in args:
        if not isinstance(arg, str):
            raise InvalidArgumentError(f"additional_args must be strings, got {arg!r}", argument=str(arg))
        if arg in ("-h", "--help") or arg.startswith("--help="):
            raise InvalidArgumentError(f"{arg}: help is not an argument to serve a model", argument=arg)
        if arg == "--config" or arg.startswith("--config="):
            raise InvalidArgumentError("--config: refused (it would read a file on this node); give the "
                                       "options themselves", argument="--config")
        if arg == "--tool-parser-plugin" or arg.startswith(("--tool-parser-plugin=", "--tool_parser_plugin")):
            raise InvalidArgumentError("--tool-parser-plugin: refused (it would import a file on this node)",
                                       argument="--tool-parser-plugin")


def _parse(dtype: str, args: Sequence[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """(what the arguments named: destination -> value, destination -> flag)."""
    parser = _parser_class()
    try:
        from poc_serve.engine.vllm_compat import serve_arg_parser

        built = serve_arg_parser(parser)
        namespace = argparse.Namespace(**{a.dest: _UNSET for a in built._actions if a.dest != argparse.SUPPRESS})
        # The body's dtype as if given first (the reference's `--dtype <dtype> <additional_args>`),
        # without vLLM's "duplicate keys" warning when the arguments name one too.
        choices = next((a.choices for a in built._actions if a.dest == "dtype"), None)
        if choices is not None and dtype not in choices:
            raise InvalidArgumentError(f"dtype: invalid choice {dtype!r} (choose from {', '.join(choices)})",
                                       argument="dtype")
        namespace.dtype = dtype
        parsed = built.parse_args(list(args), namespace=namespace)
    except ServingArgsError:
        raise
    except _ParseError as exc:
        raise InvalidArgumentError(f"invalid vLLM arguments: {exc}", argument=_named_flag(str(exc))) from None
    except SystemExit as exc:  # a parser path that still exits
        raise InvalidArgumentError(f"invalid vLLM arguments (the parser exited with {exc.code})") from None
    except Exception as exc:  # type functions and vLLM's own pre-processing may raise anything
        raise InvalidArgumentError(f"invalid vLLM arguments: {type(exc).__name__}: {exc}") from None
    named = {dest: value for dest, value in vars(parsed).items() if value is not _UNSET}
    if named.get("model_tag") is None:  # an optional positional is always "consumed" by argparse
        named.pop("model_tag", None)
    return named, _flag_names(built)


def _named_flag(message: str) -> str | None:
    """The flag an argparse message is about ("argument --x/-y: ...", "unrecognized arguments: --z")."""
    if message.startswith("argument "):
        return message[len("argument "):].split(":", 1)[0].split("/", 1)[0].strip()
    if message.startswith("unrecognized arguments:"):
        rest = message.split(":", 1)[1].split()
        return rest[0] if rest else None
    return None


# How long the hub may take to say whether it has a model.
HUB_TIMEOUT_S = 5.0


def hub_offline() -> bool:
    """Whether the Hugging Face Hub is off limits (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``
    true), read now rather than when huggingface_hub was imported."""
    from huggingface_hub import constants

    values = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any((v or "").upper() in {"1", "ON", "YES", "TRUE"} for v in values)


def check_model_available(model: str, revision: str | None = None, cache_dir: str | Path | None = None) -> str:
    """Where ``model`` will come from: ``"builtin"``, ``"local"``, ``"cache"`` or ``"hub"``; raises
    :class:`ModelNotFoundError` naming it when it cannot be found:

    - a built-in random model (``poc-tiny-qwen3``, ...): always found (built on first use); any
      other ``poc-*`` name is not found (it is never looked up on the hub);
    - an existing local file or directory: found (vLLM reads it);
    - a Hugging Face repo id: found if its ``config.json`` (or Mistral-format ``params.json``) is
      in the cache (``cache_dir``, else the default hub cache) for ``revision``; when not cached,
      offline (``HF_HUB_OFFLINE``) it is not found; online the hub is asked (a few seconds at
      most): a repo it does not have (or keeps gated from this node) is not found, and where the hub
      cannot be reached the model is accepted (vLLM downloads it at load, and a failure shows then).
    """
    if model in BUILTIN_MODELS:
        return "builtin"
    if model.startswith("poc-"):
        raise ModelNotFoundError(f"model {model!r} not found: no such built-in model (built-in: "
                                 f"{', '.join(sorted(BUILTIN_MODELS))})", model)
    path = Path(model).expanduser()
    if path.exists():
        return "local"
    if model.startswith(("/", "./", "../", "~")) or model.count("/") > 1:
        raise ModelNotFoundError(f"model {model!r} not found: no such local path", model)
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        for filename in ("config.json", "params.json"):
            found = try_to_load_from_cache(model, filename, cache_dir=cache_dir, revision=revision)
            if isinstance(found, str):
                return "cache"
    except HFValidationError as exc:
        raise ModelNotFoundError(f"model {model!r} not found: neither a local path nor a valid Hugging Face "
                                 f"repo id ({exc})", model) from None
    if hub_offline():
        where = f" at revision {revision!r}" if revision else ""
        raise ModelNotFoundError(f"model {model!r} not found: not in the Hugging Face cache{where} and "
                                 f"HF_HUB_OFFLINE is set (download it first: POST /api/v1/models/download)", model)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        HfApi().model_info(model, revision=revision, timeout=HUB_TIMEOUT_S)
    except (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError) as exc:
        raise ModelNotFoundError(f"model {model!r} not found on the Hugging Face hub: {type(exc).__name__}",
                                 model) from None
    except Exception:  # noqa: BLE001 - the hub unreachable: vLLM tries at load
        pass
    return "hub"


def parse_inference_up(model: str, dtype: str = "auto", additional_args: Sequence[str] = (),
                       base: EngineConfig | None = None, *, check_model: bool = True) -> ServingRequest:
    """Read an ``inference/up`` body with vLLM's own parser into a :class:`ServingRequest` over
    ``base`` (the deployment's engine config; EngineConfig's defaults when None).

    Raises :class:`InvalidArgumentError` for an unknown, invalid or refused argument and
    :class:`ModelNotFoundError` (with ``check_model``) for a model that cannot be found; both are
    :class:`ServingArgsError`, a ``ValueError``. Never ends the process.
    """
    base = base or EngineConfig()
    if not isinstance(model, str) or not model.strip():
        raise InvalidArgumentError("model: must be a non-empty string", argument="model")
    args = list(additional_args)
    _precheck(args)
    named, flags = _parse(dtype, args)
    flag = lambda dest: flags.get(dest, "--" + dest.replace("_", "-"))  # noqa: E731

    if "model_tag" in named:
        raise InvalidArgumentError(f"unexpected positional argument {named['model_tag']!r}: the model is the "
                                   f"body's 'model'", argument=named["model_tag"])
    if "model" in named and named.pop("model") != model:
        raise InvalidArgumentError("--model: differs from the body's 'model', which names the model",
                                   argument="--model")
    engine_names = _engine_arg_names()
    ignored: list[str] = []
    engine_kwargs: dict[str, Any] = {}
    fields: dict[str, Any] = {}
    for dest, value in named.items():
        if dest in SERVING_ARGS:
            continue
        if dest in IGNORED_ARGS:
            ignored.append(flag(dest))
        elif dest.startswith("data_parallel") or dest.startswith("dp_supervisor"):
            if not (dest == "data_parallel_size" and value == 1):
                raise InvalidArgumentError(f"{flag(dest)}: refused: {DATA_PARALLEL_REASON}", argument=flag(dest))
        elif dest in REFUSED_ENGINE_ARGS:
            raise InvalidArgumentError(f"{flag(dest)}: refused: {REFUSED_ENGINE_ARGS[dest]}", argument=flag(dest))
        elif dest in ENGINE_FIELDS:
            fields[ENGINE_FIELDS[dest]] = value
        elif dest in engine_names:
            engine_kwargs[dest] = value
        else:
            raise InvalidArgumentError(f"{flag(dest)}: {FRONTEND_REASON}", argument=flag(dest))

    fields = _engine_fields(fields, flag)
    names = named.get("served_model_name") or [model]
    tool_parser = named.get("tool_call_parser") or None
    reasoning_parser = named.get("reasoning_parser") or None
    auto_tools = bool(named.get("enable_auto_tool_choice", False))
    serving_fields = dict(served_model_name=list(dict.fromkeys(names)) if names != [model] else None,
                          tool_call_parser=tool_parser, enable_auto_tool_choice=auto_tools,
                          reasoning_parser=reasoning_parser)
    try:
        engine = EngineConfig(**{**base.model_dump(), **fields, **serving_fields, "model": model,
                                 "engine_kwargs": {**base.engine_kwargs, **engine_kwargs}})
    except ValidationError as exc:
        reverse = {v: k for k, v in ENGINE_FIELDS.items()}
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            name = flag(reverse[field]) if field in reverse else (field or "engine")
            problems.append(f"{name}: {error['msg']}")
        first = problems[0].split(":", 1)[0] if problems else None
        raise InvalidArgumentError("invalid vLLM arguments: " + "; ".join(problems), argument=first) from None

    _check_parser_name("tool", tool_parser, flag("tool_call_parser"))
    _check_parser_name("reasoning", reasoning_parser, flag("reasoning_parser"))
    if auto_tools and not tool_parser:
        raise InvalidArgumentError("--enable-auto-tool-choice: needs --tool-call-parser",
                                   argument="--enable-auto-tool-choice")
    if any(not name.strip() for name in names):
        raise InvalidArgumentError("--served-model-name: names must not be empty", argument="--served-model-name")
    if check_model:
        check_model_available(model, revision=engine_kwargs.get("revision"),
                              cache_dir=engine_kwargs.get("download_dir"))
    return ServingRequest(model=model, engine=engine, ignored_args=ignored)


def _engine_fields(fields: dict[str, Any], flag) -> dict[str, Any]:
    """vLLM's values of the EngineConfig fields in EngineConfig's terms; None means "vLLM's
    default" and keeps the base's value."""
    out = {key: value for key, value in fields.items() if value is not None}
    if out.get("dtype") == "auto":  # what the DAPI always sends: the deployment's configured dtype
        del out["dtype"]
    if "dtype" in out:
        out["dtype"] = DTYPE_ALIASES.get(out["dtype"], out["dtype"])
    if out.get("max_model_len", 1) < 1:
        raise InvalidArgumentError(f"{flag('max_model_len')}: this node needs a fixed length (a positive "
                                   f"number), not auto", argument=flag("max_model_len"))
    backend = out.get("distributed_executor_backend")
    if backend is not None and backend not in _EXECUTORS:
        raise InvalidArgumentError(f"{flag('distributed_executor_backend')}: {backend!r} refused; this node runs "
                                   f"{', '.join(_EXECUTORS)}", argument=flag("distributed_executor_backend"))
    return out


def _check_parser_name(kind: str, name: str | None, flag: str) -> None:
    if name is None:
        return
    from poc_serve.engine.vllm_compat import registered_parser_names

    known = registered_parser_names(kind)
    if name not in known:
        raise InvalidArgumentError(f"{flag}: unknown {kind} parser {name!r} (vLLM has: {', '.join(sorted(known))})",
                                   argument=flag)
