"""OpenAI-compatible HTTP serving of a RAGServeController (`hyperrag serve`).

Requests name their documents (ids and texts) beside the question, so the
controller can reuse the KV of documents it has seen. Decoding is greedy only:
a request asking for sampling, several choices or streaming is refused with a
400 naming the field, never answered with something else than it asked for.

    app = create_app(controller, "smollm2")          # any ASGI server
    serve(controller, "127.0.0.1", 8000, model_name="smollm2")   # uvicorn, until SIGINT/SIGTERM

Endpoints: GET /health, GET /v1/models, POST /v1/completions, POST
/v1/chat/completions, GET /metrics (Prometheus text). docs/server.md has the
request and response formats. Needs fastapi, uvicorn and prometheus_client
(``pip install 'dv-hyperrag[server]'``).
"""
from __future__ import annotations

import logging
import signal
import socket
import threading
import time
import uuid
from typing import Callable, List, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from hyperrag.serve.query import Query, QueryResult

logger = logging.getLogger(__name__)

SYSTEM_ROLES = ("system", "developer")  # "developer" is the newer OpenAI name of the system message
REMOTE_FLUSH_S = 10.0  # how long shutdown waits for queued writes to the shared tier

# What each request field accepts, for error messages (the upper bound of max_tokens is the app's).
MUST_BE = {
    "model": "the served model's name (GET /v1/models) or absent",
    "documents": 'a non-empty list of {"id": str, "text": str} objects with distinct ids',
    "id": "a non-empty string, distinct within the request",
    "text": "a string (the document's content)",
    "messages": "a list of an optional system message followed by one user message",
    "role": "a string: 'system' (or 'developer'), then 'user'",
    "content": "a string",
    "prompt": "a string (the question)",
    "max_tokens": "an integer >= 1",
    "max_completion_tokens": "an integer >= 1",
    "temperature": "0 or absent (this server decodes greedily)",
    "top_p": "1 or absent (this server decodes greedily)",
    "n": "1 or absent",
    "stream": "false or absent",
}


class InvalidRequest(Exception):
    """A request the server refuses; answered as an OpenAI-style error body."""

    def __init__(self, message: str, param: Optional[str], status: int = 400, code: Optional[str] = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code


# --------------------------------------------------------------- request bodies
class _Strict(BaseModel):
    # strict: "5" is not an integer and 1 is not a boolean; forbid: an unsupported OpenAI
    # option (stop, logprobs, ...) is refused rather than silently ignored.
    model_config = ConfigDict(strict=True, extra="forbid")


class Document(_Strict):
    id: str = Field(min_length=1)
    text: str


class ChatMessage(_Strict):
    role: str
    content: str


class _GenerationRequest(_Strict):
    model: Optional[str] = None
    documents: List[Document] = Field(min_length=1)
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    n: Optional[int] = None
    stream: Optional[bool] = None

    @field_validator("documents")
    @classmethod
    def _distinct_ids(cls, documents: List[Document]) -> List[Document]:
        seen = set()
        for doc in documents:
            if doc.id in seen:
                raise ValueError(f"documents must have distinct ids; {doc.id!r} appears more than once")
            seen.add(doc.id)
        return documents

    @field_validator("temperature", "top_p", "n", "stream")
    @classmethod
    def _greedy_only(cls, value, info):
        greedy = {"temperature": 0, "top_p": 1, "n": 1, "stream": False}[info.field_name]
        if value is not None and value != greedy:
            refusal = f"{info.field_name} must be {MUST_BE[info.field_name]}, got {value!r}"
            raise ValueError(f"stream is not supported; {refusal}" if info.field_name == "stream" else refusal)
        return value

    def requested_tokens(self) -> Optional[int]:
        return self.max_tokens


class CompletionRequest(_GenerationRequest):
    prompt: str


class ChatCompletionRequest(_GenerationRequest):
    messages: List[ChatMessage]
    max_completion_tokens: Optional[int] = None

    @field_validator("messages")
    @classmethod
    def _one_question(cls, messages: List[ChatMessage]) -> List[ChatMessage]:
        roles = [m.role for m in messages]
        if not (roles == ["user"] or (len(roles) == 2 and roles[0] in SYSTEM_ROLES and roles[1] == "user")):
            raise ValueError(f"messages must be {MUST_BE['messages']} (no conversation history), got roles {roles}")
        return messages

    def requested_tokens(self) -> Optional[int]:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise InvalidRequest("set max_tokens or max_completion_tokens, not both", "max_completion_tokens")
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def system_prompt(self) -> str:
        return self.messages[0].content if len(self.messages) == 2 else ""


# Field names an extra_forbidden error may list, by the object holding the bad field.
_NESTED_MODELS = {"documents": Document, "messages": ChatMessage}
_REQUEST_MODELS = {"/v1/completions": CompletionRequest, "/v1/chat/completions": ChatCompletionRequest}
# Query fields the controller's messages name -> the request field a client sent.
_CONTROLLER_FIELDS = {"output_tokens": "max_tokens", "doc_texts": "documents", "doc_ids": "documents"}


# ------------------------------------------------------------------ errors
def _error_body(message: str, param: Optional[str], kind: str = "invalid_request_error",
                code: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _param(loc) -> Optional[str]:
    """("body", "documents", 0, "text") -> "documents[0].text"; None for the body itself."""
    path = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path or None


def _error_param(error: dict) -> Optional[str]:
    """The request field a validation error is about (None: the body as a whole)."""
    return None if error["type"] == "json_invalid" else _param(error["loc"])  # its loc ends at a character offset


def _validation_message(error: dict, path: str) -> str:
    loc, kind, param = error["loc"], error["type"], _error_param(error)
    if kind == "json_invalid":
        return f"the request body is not valid JSON ({error.get('ctx', {}).get('error', error['msg'])})"
    if param is None:
        return "the request body must be a JSON object, sent with Content-Type: application/json"
    if kind == "value_error":  # our validators' messages already name the field and what it allows
        return str(error["ctx"]["error"])
    leaf = next((p for p in reversed(loc) if isinstance(p, str)), "")
    if kind == "extra_forbidden":
        parent = next((p for p in reversed(loc[:-1]) if isinstance(p, str) and p in _NESTED_MODELS), None)
        model = _NESTED_MODELS[parent] if parent else _REQUEST_MODELS.get(path)
        allowed = f"; allowed fields: {', '.join(model.model_fields)}" if model else ""
        return f"{param} is not supported by this server{allowed}"
    allowed = f"; {leaf} must be {MUST_BE[leaf]}" if leaf in MUST_BE else ""
    return f"{param}: {error['msg'][:1].lower()}{error['msg'][1:]}{allowed}"


def _controller_error(exc: ValueError) -> InvalidRequest:
    """The controller's message in the request's terms: its Query field names become the
    request fields they came from (the query id, which the client never saw, is dropped)."""
    message = str(exc)
    if message.startswith("query '"):
        message = message.split(": ", 1)[-1]
    named = sorted((message.find(name), name) for name in _CONTROLLER_FIELDS if name in message)
    for name, field in _CONTROLLER_FIELDS.items():
        message = message.replace(name, field)
    return InvalidRequest(message, _CONTROLLER_FIELDS[named[0][1]] if named else None)


# ------------------------------------------------------------------ the app
def _eos_ids(engine) -> frozenset:
    """Token ids that end an answer: the tokenizer's EOS and the model's generation config's."""
    ids = {engine.tokenizer.eos_token_id}
    generation = getattr(engine.model, "generation_config", None)
    configured = getattr(generation, "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return frozenset(i for i in ids if i is not None)


def create_app(controller, model_name: str, *, max_tokens_limit: Optional[int] = None) -> FastAPI:
    """A FastAPI app serving ``controller`` (whose engine must decode and tokenize) as ``model_name``.

    max_tokens_limit: the largest max_tokens a request may ask (None: the model's
    context window); the controller's default_output_tokens answers requests
    that set none. Endpoints are plain functions: FastAPI runs each request in its
    thread pool, so requests are served concurrently (the engine serializes its
    forward passes; the controller is thread-safe).
    """
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    from hyperrag.serve.prometheus import ControllerCollector

    engine = controller.engine
    if not (getattr(engine, "decodes", False) and getattr(engine, "tokenizer", None) is not None):
        raise ValueError(f"the controller's engine must decode and tokenize (a TransformersEngine), "
                         f"got {type(engine).__name__}")
    if not isinstance(model_name, str) or not model_name:
        raise ValueError(f"model_name must be a non-empty string, got {model_name!r}")
    limit = engine.max_context if max_tokens_limit is None else max_tokens_limit
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"max_tokens_limit must be None or an integer >= 1, got {max_tokens_limit!r}")
    if not 1 <= controller.default_output_tokens <= limit:
        raise ValueError(f"the controller's default_output_tokens must be in [1, max_tokens_limit={limit}], "
                         f"got {controller.default_output_tokens}")
    eos = _eos_ids(engine)
    registry = CollectorRegistry()
    registry.register(ControllerCollector(controller))
    started = int(time.time())
    app = FastAPI(title="HyperRAG", summary="OpenAI-compatible completions with document KV reuse")

    def answer(request: _GenerationRequest, question: str, system_prompt: str, id_prefix: str):
        """Serve one request: (response id, QueryResult, answer text, answer token count, finish reason)."""
        if request.model is not None and request.model != model_name:
            raise InvalidRequest(f"model {request.model!r} is not served here; this server serves {model_name!r}",
                                 "model", status=404, code="model_not_found")
        tokens = request.requested_tokens()
        if tokens is not None and not 1 <= tokens <= limit:
            field = "max_tokens" if request.max_tokens is not None else "max_completion_tokens"
            raise InvalidRequest(f"{field} must be an integer in [1, {limit}], got {tokens}", field)
        response_id = f"{id_prefix}-{uuid.uuid4().hex}"
        query = Query(query_id=response_id, text=question, doc_ids=[d.id for d in request.documents],
                      doc_texts=[d.text for d in request.documents], output_tokens=tokens,
                      system_prompt=system_prompt)
        try:
            result = controller.process(query)
        except ValueError as exc:  # the controller validates before touching any state
            raise _controller_error(exc) from None
        ids = list(result.output_token_ids or [])
        stop = next((i for i, t in enumerate(ids) if t in eos), None)
        # The engine always decodes max_tokens tokens; the answer ends at the first EOS, which counts
        # as generated (as it would for a decoder that stops there).
        text = engine.tokenizer.decode(ids[:stop], skip_special_tokens=True)
        generated = len(ids) if stop is None else stop + 1
        return response_id, result, text, generated, "length" if stop is None else "stop"

    def body(response_id: str, kind: str, choice: dict, result: QueryResult, generated: int) -> dict:
        prompt_tokens = result.cached_tokens + result.computed_tokens - result.recomputed_tokens
        return {
            "id": response_id, "object": kind, "created": int(time.time()), "model": model_name,
            "choices": [{"index": 0, "logprobs": None, **choice}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": generated,
                      "total_tokens": prompt_tokens + generated,
                      "prompt_tokens_details": {"cached_tokens": result.cached_tokens}},
            "hyperrag": {"cached_tokens": result.cached_tokens, "computed_tokens": result.computed_tokens,
                         "matched_docs": result.matched_docs, "ttft_s": result.ttft_s,
                         "doc_order": result.doc_order},
        }

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list",
                "data": [{"id": model_name, "object": "model", "created": started, "owned_by": "hyperrag"}]}

    @app.post("/v1/completions")
    def completions(request: CompletionRequest) -> dict:
        response_id, result, text, generated, finish = answer(request, request.prompt, "", "cmpl")
        return body(response_id, "text_completion", {"text": text, "finish_reason": finish}, result, generated)

    @app.post("/v1/chat/completions")
    def chat_completions(request: ChatCompletionRequest) -> dict:
        response_id, result, text, generated, finish = answer(
            request, request.messages[-1].content, request.system_prompt(), "chatcmpl")
        message = {"role": "assistant", "content": text}
        return body(response_id, "chat.completion", {"message": message, "finish_reason": finish}, result,
                    generated)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(RequestValidationError)
    def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        message = "; ".join(_validation_message(e, request.url.path) for e in errors)
        return JSONResponse(_error_body(message, _error_param(errors[0]) if errors else None), status_code=400)

    @app.exception_handler(InvalidRequest)
    def refused(request: Request, exc: InvalidRequest) -> JSONResponse:
        return JSONResponse(_error_body(exc.message, exc.param, code=exc.code), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:  # unknown path, wrong method
        return JSONResponse(_error_body(f"{request.method} {request.url.path}: {exc.detail}", None),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    def server_error(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the server's log (uvicorn logs the exception), never to the client.
        return JSONResponse(_error_body("internal server error; see the server log", None, "server_error"),
                            status_code=500)

    return app


# ------------------------------------------------------------------ running
def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: any free port), not listening yet: connections are
    refused until ``serve`` listens, so a client never waits on a server still loading."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restarted server may reuse the port
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port} ({exc.strerror})") from None
    return sock


def close_controller(controller) -> None:
    """Release what a controller holds open: queued writes to the shared tier are flushed and its
    connection closed, pending cache transfers finished, a metrics server stopped."""
    remote = controller.transactions.remote
    if remote is not None:
        flush = getattr(remote, "flush", None)
        if flush is not None and not flush(REMOTE_FLUSH_S):
            logger.warning("shared tier: queued writes not done after %.0f s; dropped", REMOTE_FLUSH_S)
        client = getattr(remote, "client", None)
        if client is not None:
            client.close()
    if controller.cache is not None:
        controller.cache.close()
    metrics_server = getattr(controller, "metrics_server", None)
    if metrics_server is not None:
        metrics_server.close()


def serve(controller, host: str = "127.0.0.1", port: int = 8000, *, model_name: str,
          listener: Optional[socket.socket] = None, max_tokens_limit: Optional[int] = None,
          log_level: str = "info", ready: Optional[Callable[[str], None]] = None) -> None:
    """Serve ``controller`` over HTTP until SIGINT or SIGTERM, then close it (``close_controller``).

    On a stop signal the server stops accepting connections, finishes the requests in
    flight and returns (a second SIGINT stops waiting for them). listener: a socket from ``bind``
    (host and port are then only its address); ready(url) is called once connections
    are accepted.
    """
    import uvicorn

    app = create_app(controller, model_name, max_tokens_limit=max_tokens_limit)
    sock = listener or bind(host, port)
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=None)
    stop_signals = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
    # Once shut down, uvicorn raises the stop signal again for the handler it replaced, which would
    # end the process by that signal; the handler it finds notes it instead, so serve returns.
    previous = {sig: signal.signal(sig, _noted) for sig in stop_signals}
    try:
        sock.listen(config.backlog)
        if ready is not None:
            address, bound_port = sock.getsockname()[:2]
            ready(f"http://{f'[{address}]' if ':' in address else address}:{bound_port}")
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
        close_controller(controller)


def _noted(signum, frame) -> None:
    logger.info("stopped by %s", signal.Signals(signum).name)


__all__ = ["ChatCompletionRequest", "CompletionRequest", "Document", "InvalidRequest", "bind", "close_controller",
           "create_app", "serve"]
