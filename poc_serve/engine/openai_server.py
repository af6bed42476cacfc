"""Inference as the network sends it: vLLM's own OpenAI serving classes over the engine's ``AsyncLLM``,
with the network's extensions (spec ``ml-node.md`` sections 5.2-5.5).

:class:`OpenAIServer` is built inside the engine replica over the ``AsyncLLM`` that
:class:`~poc_serve.engine.engine.PoCEngine` owns (``PoCEngine.openai_server()``) and serves
``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``, ``/tokenize`` and ``/detokenize``
through vLLM's ``OpenAIServingChat``, ``OpenAIServingCompletion``, ``OpenAIServingModels`` and
tokenization serving: requests are vLLM's own request models, answers and errors vLLM's own
(shape and codes). :meth:`OpenAIServer.handle` gives every answer as an async iterator of plain
picklable items, so that a Serve deployment can stream it back through a handle:

* not streamed: one item ``{"status": int, "stream": False, "media_type": str, "body": bytes}``,
  ``body`` the answer's JSON (the response, or vLLM's ``{"error": {...}}``), serialized here so
  that the ingress relays bytes: it neither unpickles nor re-encodes a large dict (one answer of
  256 tokens with 5 top logprobs each is about 2,000 small dicts);
* streamed: ``{"status": int, "stream": True, "media_type": str}``, then SSE text chunks
  ``"data: {...}\\n\\n"`` ending with ``"data: [DONE]\\n\\n"`` (an error after the start comes as
  vLLM sends it: a ``data: {"error": ...}`` chunk).

Closing the iterator (``aclose()``) or cancelling the task that drives it aborts the engine
requests: the iterator closes vLLM's generator, whose ``AsyncLLM.generate`` aborts its request
on ``GeneratorExit``/``CancelledError`` (checked in tests/engine/test_openai_server.py).

The network's extensions, on vLLM's public extension points (``worker_extension.py`` has the
engine side):

* ``logprob_tokens="ids"``: vLLM renders logprob tokens as ``token_id:N``
  (``return_tokens_as_token_ids``); this server rewrites them to ``"N"`` with ``bytes`` of that
  string, in chat ``logprobs.content[]`` and ``top_logprobs[]`` and in the completions shape
  (``tokens`` and the keys of ``top_logprobs``), streamed or not. ``"text"``: vLLM's output as is.
* ``logprobs_mode`` (body field, default from the constructor): ``processed_logprobs`` (the
  log-softmax after temperature, top-k, top-p and the other processors; tokens filtered out are
  ``-inf`` in the engine and ``-9999.0`` in the JSON, vLLM's floor) or ``raw_logprobs``.
* ``enforced_tokens`` (body field, ``{"tokens": [{"token": "<id>", "top_tokens": [...]}, ...]}``):
  numeric strings are token ids, any other text is tokenized (no special tokens); EOS is appended
  when the last id is not EOS. The engine emits exactly these ids while the logprobs are the
  model's own in the requested mode. ``top_tokens`` are not used (the fork guesses a missing
  ``logprobs_mode`` from them; here a missing mode is the constructor's default).
  ``enforced_str`` (a fork field) is accepted as text to tokenize when ``enforced_tokens`` is absent.

Both extension fields are taken out of the body before vLLM's request model reads it (which
would ignore them) and travel as ``vllm_xargs`` into ``SamplingParams.extra_args``.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

from poc_serve.engine.worker_extension import ENFORCED_TOKENS_ARG, LOGPROBS_MODE_ARG, LOGPROBS_MODES

ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/tokenize", "/detokenize")
TOKEN_ID_PREFIX = "token_id:"  # vLLM's return_tokens_as_token_ids rendering
JSON_MEDIA_TYPE = "application/json"
SSE_MEDIA_TYPE = "text/event-stream"


class OpenAIServer:
    """vLLM's OpenAI serving over one ``AsyncLLM``, with the network's extensions.

    Args:
        llm: the started ``AsyncLLM``.
        served_model_names: the names requests may give as ``model`` (a string: one name); the
            first is the name answers carry and ``/v1/models`` lists first.
        model_path: the path vLLM loaded (``/v1/models``' ``root``); None: the engine's.
        logprob_tokens: ``"ids"`` (the network's decimal token-id strings) or ``"text"`` (vLLM's).
        logprobs_mode: default ``logprobs_mode`` of requests that name none.
        tool_call_parser, enable_auto_tool_choice, reasoning_parser: as ``vllm serve``'s
            ``--tool-call-parser``, ``--enable-auto-tool-choice``, ``--reasoning-parser``.
        chat_template: None: the model's own.
        extensions: whether the engine was built with the network's extensions
            (``EngineConfig.inference_extensions``); without them ``enforced_tokens`` and
            ``raw_logprobs`` are refused with a 400 rather than silently ignored.
    """

    def __init__(self, llm: Any, served_model_names: str | list[str], model_path: str | None = None, *,
                 logprob_tokens: str = "ids", logprobs_mode: str = "processed_logprobs",
                 tool_call_parser: str | None = None, enable_auto_tool_choice: bool = False,
                 reasoning_parser: str | None = None, chat_template: str | None = None,
                 extensions: bool = True):
        from poc_serve.engine.vllm_compat import build_openai_serving

        if logprob_tokens not in ("ids", "text"):
            raise ValueError(f"logprob_tokens must be 'ids' or 'text', got {logprob_tokens!r}")
        if logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode must be one of {list(LOGPROBS_MODES)}, got {logprobs_mode!r}")
        names = [served_model_names] if isinstance(served_model_names, str) else list(served_model_names)
        if not names:
            raise ValueError("at least one served model name is needed")
        self.llm = llm
        self.served_model_names = names
        self.logprob_tokens = logprob_tokens
        self.logprobs_mode = logprobs_mode
        self.extensions = extensions
        serving = build_openai_serving(
            llm, names, model_path or llm.model_config.model, return_tokens_as_token_ids=logprob_tokens == "ids",
            chat_template=chat_template, tool_call_parser=tool_call_parser,
            enable_auto_tool_choice=enable_auto_tool_choice, reasoning_parser=reasoning_parser)
        self._serving = serving
        self._error = serving["create_error_response"]
        self._tokenizer = None

    # -- the one entry point -------------------------------------------------------------------

    async def handle(self, route: str, body: dict[str, Any] | None = None) -> AsyncIterator[Any]:
        """Answer ``body`` on ``route`` (one of :data:`ROUTES`; a trailing slash is ignored): an
        async iterator of one item ``{"status", "stream": False, "media_type", "body": JSON
        bytes}`` (not streamed), or a head ``{"status", "stream": True, "media_type"}`` and SSE
        text chunks (streamed). See the module docstring."""
        path = "/" + route.strip().strip("/")
        try:
            if path == "/v1/models":
                answer: Any = await self._serving["models"].show_available_models()
            elif path not in ROUTES:
                answer = self._error(f"no route {route!r}; routes: {', '.join(ROUTES)}", "NotFoundError",
                                     _status(404))
            elif not isinstance(body, dict):
                answer = self._error("the request body must be a JSON object")
            elif path == "/v1/chat/completions":
                answer = await self._generate(body, "ChatCompletionRequest", "chat", "create_chat_completion")
            elif path == "/v1/completions":
                answer = await self._generate(body, "CompletionRequest", "completion", "create_completion")
            elif path == "/tokenize":
                answer = await self._serving["tokenization"].create_tokenize(
                    _validate(self._serving["TokenizeRequest"], body), None)
            else:
                answer = await self._serving["tokenization"].create_detokenize(
                    _validate(self._serving["DetokenizeRequest"], body), None)
        except Exception as exc:  # vLLM's mapping: client errors 400/404/422, the rest 500
            answer = self._error(exc)
        if isinstance(answer, self._serving["ErrorResponse"]):
            yield _json_answer(answer.error.code, answer.model_dump())
        elif hasattr(answer, "model_dump"):
            out = answer.model_dump()
            yield _json_answer(200, self._rewrite(out) if self.logprob_tokens == "ids" else out)
        else:  # vLLM's SSE generator
            yield {"status": 200, "stream": True, "media_type": SSE_MEDIA_TYPE}
            try:
                async for chunk in answer:
                    yield self._rewrite_sse(chunk) if self.logprob_tokens == "ids" else chunk
            finally:
                await answer.aclose()

    # -- chat and completions --------------------------------------------------------------------

    async def _generate(self, body: dict[str, Any], request_class: str, serving: str, method: str) -> Any:
        body = dict(body)
        xargs = await self._extension_args(body)
        if xargs:
            given = body.get("vllm_xargs")
            body["vllm_xargs"] = {**(given if isinstance(given, dict) else {}), **xargs}
        request = _validate(self._serving[request_class], body)
        return await getattr(self._serving[serving], method)(request, None)

    async def _extension_args(self, body: dict[str, Any]) -> dict[str, Any]:
        """Take the network's fields out of ``body``; their ``vllm_xargs``."""
        mode = body.pop("logprobs_mode", None)
        enforced = body.pop("enforced_tokens", None)
        enforced_str = body.pop("enforced_str", None)
        if mode is None:
            mode = self.logprobs_mode
        if mode not in LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode must be one of {list(LOGPROBS_MODES)}, got {mode!r}")
        ids = None
        if enforced is not None:
            ids = await self._enforced_ids(enforced)
        elif enforced_str is not None:
            if not isinstance(enforced_str, str):
                raise ValueError("enforced_str must be a string")
            ids = await self._enforced_ids({"tokens": [{"token": enforced_str}]}) if enforced_str else None
        if not self.extensions:
            if ids is not None or mode != "processed_logprobs":
                raise ValueError("this engine was built without the inference extensions "
                                 "(inference_extensions: false): enforced_tokens and raw_logprobs are unavailable")
            return {}
        xargs: dict[str, Any] = {LOGPROBS_MODE_ARG: mode}
        if ids is not None:
            xargs[ENFORCED_TOKENS_ARG] = ids
        return xargs

    async def _enforced_ids(self, enforced: Any) -> list[int] | None:
        """Token ids of an ``enforced_tokens`` object: numeric strings are ids, other text is
        tokenized; EOS appended if the last id is not EOS. None for an empty list (free sampling)."""
        tokens = enforced.get("tokens") if isinstance(enforced, dict) else None
        if not isinstance(tokens, list):
            raise ValueError('enforced_tokens must be {"tokens": [{"token": "<id>", "top_tokens": [...]}, ...]}')
        tokenizer = await self._get_tokenizer()
        vocab = max(len(tokenizer), self.llm.model_config.get_vocab_size())  # the model's rows may exceed it
        ids: list[int] = []
        for item in tokens:
            token = item.get("token") if isinstance(item, dict) else None
            if isinstance(token, int) and not isinstance(token, bool):
                token = str(token)
            if not isinstance(token, str):
                raise ValueError("every enforced_tokens.tokens[] item needs a string 'token'")
            if token.isdigit() and token.isascii():
                ids.append(int(token))
            else:
                ids += tokenizer.encode(token, add_special_tokens=False)
        if not ids:
            return None
        bad = [t for t in ids if t >= vocab]
        if bad:
            raise ValueError(f"enforced token ids {bad[:5]} are outside the vocabulary ({vocab} tokens)")
        eos = tokenizer.eos_token_id
        if eos is not None and ids[-1] != eos:
            ids.append(eos)
        return ids

    async def _get_tokenizer(self) -> Any:
        if self._tokenizer is None:
            from poc_serve.engine.vllm_compat import engine_tokenizer

            self._tokenizer = await engine_tokenizer(self.llm)
        return self._tokenizer

    # -- logprob tokens as ids --------------------------------------------------------------------

    @staticmethod
    def _rewrite(out: dict[str, Any]) -> dict[str, Any]:
        """``token_id:N`` -> ``N`` (and ``bytes`` of ``N``) in every choice's logprobs, in place."""
        for choice in out.get("choices") or ():
            logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
            if not isinstance(logprobs, dict):
                continue
            for item in logprobs.get("content") or ():  # chat
                _rewrite_item(item)
                for top in item.get("top_logprobs") or ():
                    _rewrite_item(top)
            if isinstance(logprobs.get("tokens"), list):  # completions
                logprobs["tokens"] = [_token_id(t) for t in logprobs["tokens"]]
                logprobs["top_logprobs"] = [
                    {_token_id(k): v for k, v in top.items()} if isinstance(top, dict) else top
                    for top in logprobs.get("top_logprobs") or ()]
        return out

    def _rewrite_sse(self, chunk: str) -> str:
        if TOKEN_ID_PREFIX not in chunk:
            return chunk
        events = []
        for event in chunk.split("\n\n"):
            if event.startswith("data: ") and TOKEN_ID_PREFIX in event:
                data = self._rewrite(json.loads(event[len("data: "):]))
                event = "data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":"))
            events.append(event)
        return "\n\n".join(events)


def _json_answer(status: int, answer: dict[str, Any]) -> dict[str, Any]:
    """The one item of a non-streamed answer: its status and its JSON, compact as vLLM writes it."""
    body = json.dumps(answer, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    return {"status": status, "stream": False, "media_type": JSON_MEDIA_TYPE, "body": body}


def _token_id(token: Any) -> Any:
    return token[len(TOKEN_ID_PREFIX):] if isinstance(token, str) and token.startswith(TOKEN_ID_PREFIX) else token


def _rewrite_item(item: Any) -> None:
    if isinstance(item, dict) and isinstance(item.get("token"), str) and item["token"].startswith(TOKEN_ID_PREFIX):
        item["token"] = _token_id(item["token"])
        item["bytes"] = list(item["token"].encode("ascii"))


def _validate(model: Any, body: dict[str, Any]) -> Any:
    """``body`` as vLLM's request model (a pydantic class or a union of them); a pydantic
    ``ValidationError`` is a ``ValueError``: vLLM's 400."""
    from pydantic import TypeAdapter

    if hasattr(model, "model_validate"):
        return model.model_validate(body)
    return TypeAdapter(model).validate_python(body)


def _status(code: int) -> Any:
    from http import HTTPStatus

    return HTTPStatus(code)
