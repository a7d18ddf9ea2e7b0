"""`hyperrag serve` through the installed console script, driven by the official openai client.

One server process serves the whole module (a tiny model; float32, one torch thread).
Its answers must equal the library's (an in-process controller on the same model),
repeated documents must be served from the cache, /metrics must count exactly the
queries served, bad requests must get a 4xx naming the field, and SIGTERM must let
the request in flight finish and exit 0.
"""
import json
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("hyperrag.cache", reason="needs the native cache module")
from engine_fixtures import tiny_model_dir, tiny_texts  # noqa: E402,F401  (fixtures)
from test_cli import HYPERRAG  # noqa: E402

openai = pytest.importorskip("openai", reason="the client side of these tests: pip install openai")
pytest.importorskip("fastapi", reason="the server needs it: pip install 'dv-hyperrag[server]'")

SERVER_MAX_TOKENS = 16  # --max-tokens: the answer length of requests that set none
THREADS, REQUESTS_PER_THREAD = 4, 3
QUESTIONS = ("What is described here?", "Who is involved?", "Why does it matter?", "When did it happen?")
SYSTEM = "Answer from the documents only."
READY_TIMEOUT_S = 180
# The tiny model's weights are scaled up by this much so that its greedy answers depend on the
# prompt (at its initial scale it answers every prompt with the same token).
WEIGHT_SCALE = 4.0


def workload(texts):
    """REQUESTS_PER_THREAD requests for each of THREADS threads, request k in thread k // REQUESTS_PER_THREAD.
    A thread sends chat (one with a system message) or completions, always with the same first
    document: its later requests find that prefix cached by its first."""
    ids = list(texts)
    requests = []
    for k in range(THREADS * REQUESTS_PER_THREAD):
        thread, turn = divmod(k, REQUESTS_PER_THREAD)
        docs = [{"id": d, "text": texts[d]} for d in (ids[thread % 3], ids[3 + k % 4])]
        requests.append({"chat": thread % 2 == 0, "system": SYSTEM if thread == 2 else "", "turn": turn,
                         "question": QUESTIONS[k % 4], "documents": docs, "max_tokens": None if k % 3 == 0 else 8 + k})
    return requests


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model, weights scaled so that answers vary (norms kept)."""
    from transformers import AutoModelForCausalLM

    target = tmp_path_factory.mktemp("served-model") / "tiny"
    shutil.copytree(tiny_model_dir, target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "norm" not in name:
                weight.mul_(WEIGHT_SCALE)
    model.save_pretrained(target)
    return target


def library_controller(model_dir):
    from hyperrag import RAGOptimize, RAGOptimizeConfig
    from hyperrag.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(str(model_dir), dtype="float32")
    return RAGOptimize(RAGOptimizeConfig()).build_controller(engine=engine, default_output_tokens=SERVER_MAX_TOKENS)


@pytest.fixture(scope="module")
def reference(model_dir, tiny_texts):
    """The library path: each request's answer tokens from an in-process controller. Then a second
    end-of-answer id is chosen among those tokens (appearing in some answers but not all) and written
    into the model's generation config, so that answers end both ways: "stop" and "length"."""
    from transformers import GenerationConfig

    from hyperrag import Query

    controller = library_controller(model_dir)
    requests = workload(tiny_texts)
    for k, r in enumerate(requests):
        result = controller.process(Query(
            query_id=f"ref-{k}", text=r["question"], doc_ids=[d["id"] for d in r["documents"]],
            doc_texts=[d["text"] for d in r["documents"]], output_tokens=r["max_tokens"], system_prompt=r["system"]))
        r["token_ids"] = list(result.output_token_ids)
        r["prompt_tokens"] = result.cached_tokens + result.computed_tokens - result.recomputed_tokens
    tokenizer = controller.engine.tokenizer
    answers_with = Counter(t for r in requests for t in set(r["token_ids"][1:]))
    stop = max((t for t, n in answers_with.items() if n < len(requests)), key=answers_with.get, default=None)
    assert stop is not None, f"the model's answers do not vary: {[r['token_ids'] for r in requests]}"
    eos = {tokenizer.eos_token_id, stop}
    generation = GenerationConfig.from_pretrained(model_dir)
    generation.eos_token_id = sorted(eos)
    generation.save_pretrained(model_dir)
    for r in requests:
        cut = next((i for i, t in enumerate(r["token_ids"]) if t in eos), None)
        r["text"] = tokenizer.decode(r["token_ids"][:cut], skip_special_tokens=True)
        r["finish_reason"] = "length" if cut is None else "stop"
        r["completion_tokens"] = len(r["token_ids"]) if cut is None else cut + 1
    finishes = Counter(r["finish_reason"] for r in requests)
    assert finishes["stop"] and finishes["length"], finishes
    return requests


def launch(model_dir, log_path, *flags):
    """`hyperrag serve` on a free loopback port (--port 0: the ready line names it), once ready. stdout and
    stderr go to a file: a pipe left unread could fill and block the server."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen([*HYPERRAG, "serve", "--model", str(model_dir), "--dtype", "float32", "--port", "0",
                                 "--threads", "1", "--max-tokens", str(SERVER_MAX_TOKENS), *flags],
                                stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + READY_TIMEOUT_S
    ready = None
    while ready is None and proc.poll() is None and time.monotonic() < deadline:
        ready = re.search(r"^serving (.+) on (http://\S+)$", log_path.read_text(), re.MULTILINE)
        time.sleep(0.2)
    if ready is None:
        proc.kill()
        pytest.fail(f"{proc.args} was not ready (exit status {proc.poll()}):\n{log_path.read_text()}")
    assert ready.group(1) == str(model_dir)
    return SimpleNamespace(proc=proc, url=ready.group(2), log=log_path, model=str(model_dir), served=0)


@pytest.fixture(scope="module")
def server(model_dir, reference, tmp_path_factory):
    state = launch(model_dir, tmp_path_factory.mktemp("server") / "server.log")
    yield state
    if state.proc.poll() is None:  # a test failed before the shutdown test
        state.proc.kill()
        state.proc.wait()


def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def ask(api, model, request):
    """One workload request through the openai client; the response as a dict."""
    extra = {"extra_body": {"documents": request["documents"]}}
    if request["max_tokens"] is not None:
        extra["max_tokens"] = request["max_tokens"]
    if request["chat"]:
        messages = ([{"role": "system", "content": request["system"]}] if request["system"] else []) + \
                   [{"role": "user", "content": request["question"]}]
        response = api.chat.completions.create(model=model, messages=messages, **extra)
    else:
        response = api.completions.create(model=model, prompt=request["question"], **extra)
    return response.model_dump()


def answer_text(response) -> str:
    choice = response["choices"][0]
    return choice["message"]["content"] if response["object"] == "chat.completion" else choice["text"]


def post(server, path, body):
    """(status, JSON body) of a raw POST: for bodies the openai client would not send."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{server.url}{path}", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def scrape(server) -> str:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics:\n{text}"
    return float(found.group(1))


def test_health_and_models(server):
    with urllib.request.urlopen(f"{server.url}/health", timeout=30) as response:
        assert json.load(response) == {"status": "ok"}
    assert [m.id for m in client(server).models.list().data] == [server.model]


def test_concurrent_answers_equal_the_library_and_reuse_documents(server, reference):
    api = client(server)

    def worker(t):
        return [(k, ask(api, server.model, reference[k]))
                for k in range(t * REQUESTS_PER_THREAD, (t + 1) * REQUESTS_PER_THREAD)]

    with ThreadPoolExecutor(THREADS) as pool:
        answers = dict(pair for done in pool.map(worker, range(THREADS)) for pair in done)
    server.served += len(answers)
    for k, response in sorted(answers.items()):
        expected = reference[k]
        choice = response["choices"][0]
        got = (answer_text(response), choice["finish_reason"])
        assert got == (expected["text"], expected["finish_reason"]), (k, response)
        assert response["object"] == ("chat.completion" if expected["chat"] else "text_completion")
        assert response["model"] == server.model and response["id"]
        usage = response["usage"]
        assert usage["prompt_tokens"] == expected["prompt_tokens"], (k, usage)
        assert usage["completion_tokens"] == expected["completion_tokens"], (k, usage)
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        reuse = response["hyperrag"]
        assert usage["prompt_tokens_details"]["cached_tokens"] == reuse["cached_tokens"]
        assert reuse["doc_order"] == [d["id"] for d in expected["documents"]]
        assert 0 < reuse["ttft_s"] < 60
        if expected["turn"] > 0:  # its thread's first request stored the first document
            assert reuse["matched_docs"] >= 1 and reuse["cached_tokens"] > 0, (k, reuse)

    # The same request again: every document is in the cache now.
    again = ask(api, server.model, reference[1])
    server.served += 1
    assert answer_text(again) == reference[1]["text"]
    assert again["hyperrag"]["matched_docs"] == len(reference[1]["documents"]), again["hyperrag"]
    assert again["hyperrag"]["cached_tokens"] > 0
    assert metric(scrape(server), "hyperrag_queries_total") == server.served


CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
DOCS = [{"id": "a", "text": "The river floods every spring."}]
MESSAGES = [{"role": "user", "content": "When does the river flood?"}]


def chat(**fields):
    return {"messages": MESSAGES, "documents": DOCS, **fields}


# (path, body, status, error.param, a fragment the message must hold)
BAD_REQUESTS = {
    "missing messages": (CHAT, {"documents": DOCS}, 400, "messages", "field required"),
    "documents not a list": (CHAT, chat(documents={"id": "a", "text": "t"}), 400, "documents", "valid list"),
    "documents missing": (COMPLETIONS, {"prompt": "q"}, 400, "documents", '{"id": str, "text": str}'),
    "documents empty": (CHAT, chat(documents=[]), 400, "documents", "at least 1"),
    "document without text": (CHAT, chat(documents=[{"id": "a"}]), 400, "documents[0].text", "field required"),
    "document id empty": (CHAT, chat(documents=[{"id": "", "text": "t"}]), 400, "documents[0].id", "non-empty"),
    "document id a number": (CHAT, chat(documents=[{"id": 7, "text": "t"}]), 400, "documents[0].id", "valid string"),
    "document ids repeat": (CHAT, chat(documents=DOCS * 2), 400, "documents", "'a' appears more than once"),
    "document field unknown": (CHAT, chat(documents=[{**DOCS[0], "title": "x"}]), 400, "documents[0].title",
                               "allowed fields: id, text"),
    "max_tokens negative": (CHAT, chat(max_tokens=-1), 400, "max_tokens", "in [1, 2048]"),
    "max_tokens huge": (CHAT, chat(max_tokens=10**9), 400, "max_tokens", "in [1, 2048]"),
    "max_tokens past the window": (COMPLETIONS, {"prompt": "q", "documents": DOCS, "max_tokens": 2040}, 400,
                                   "max_tokens", "context window of 2048"),
    "max_tokens a string": (CHAT, chat(max_tokens="16"), 400, "max_tokens", "valid integer"),
    "both token limits": (CHAT, chat(max_tokens=4, max_completion_tokens=4), 400, "max_completion_tokens", "not both"),
    "temperature": (CHAT, chat(temperature=0.7), 400, "temperature", "0 or absent"),
    "top_p": (COMPLETIONS, {"prompt": "q", "documents": DOCS, "top_p": 0.5}, 400, "top_p", "1 or absent"),
    "n": (CHAT, chat(n=2), 400, "n", "1 or absent"),
    "stream": (CHAT, chat(stream=True), 400, "stream", "stream is not supported"),
    "stop unsupported": (CHAT, chat(stop=["\n"]), 400, "stop", "allowed fields: model, documents"),
    "messages history": (CHAT, chat(messages=[*MESSAGES, {"role": "assistant", "content": "a"}, *MESSAGES]), 400,
                         "messages", "roles ['user', 'assistant', 'user']"),
    "messages system only": (CHAT, chat(messages=[{"role": "system", "content": "s"}]), 400, "messages",
                             "optional system message followed by one user message"),
    "message content a list": (CHAT, chat(messages=[{"role": "user", "content": ["q"]}]), 400,
                               "messages[0].content", "content must be a string"),
    "prompt a list": (COMPLETIONS, {"prompt": ["q"], "documents": DOCS}, 400, "prompt", "valid string"),
    "unknown model": (CHAT, chat(model="gpt-4o"), 404, "model", "this server serves"),
    "body not an object": (CHAT, [1, 2], 400, None, "must be a JSON object"),
    "body not JSON": (CHAT, b"{messages", 400, None, "not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_4xx_naming_the_field(server, case):
    path, body, status, param, fragment = BAD_REQUESTS[case]
    got_status, got = post(server, path, body)
    error = got.get("error", {})
    assert (got_status, error.get("param"), error.get("type")) == (status, param, "invalid_request_error"), got
    assert fragment in error["message"], got
    assert param is None or param.split("[")[0].split(".")[-1] in error["message"], got
    assert "Traceback" not in error["message"]


@pytest.mark.parametrize("field, value", [("temperature", 0.7), ("stream", True), ("max_tokens", -1), ("n", 3)])
def test_openai_client_sees_the_refused_field(server, field, value):
    with pytest.raises(openai.BadRequestError) as refused:
        client(server).chat.completions.create(model=server.model, messages=MESSAGES, extra_body={"documents": DOCS},
                                               **{field: value})
    assert refused.value.status_code == 400 and refused.value.body["param"] == field, refused.value.body


def test_refused_requests_serve_no_query(server):
    """Bad input is refused before the controller sees it: the counter holds only the good requests."""
    assert metric(scrape(server), "hyperrag_queries_total") == server.served


def test_unknown_path_is_an_openai_error(server):
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{server.url}/v1/embeddings", timeout=30)
    assert missing.value.code == 404 and "error" in json.load(missing.value)


@pytest.mark.parametrize("flags, fragment", [
    (["--port", "70000"], "argument --port: must be an integer in [0, 65535]"),
    (["--recompute-budget", "0.5"], "--recompute-budget needs --reuse approximate"),
    (["--gpu-mb", "0", "--host-mb", "0"], "--gpu-mb and --host-mb are both 0"),
])
def test_bad_flag_is_one_line_and_exit_2(model_dir, flags, fragment):
    proc = subprocess.run([*HYPERRAG, "serve", "--model", str(model_dir), *flags], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, (proc.args, proc.stderr)
    assert proc.stderr.startswith("hyperrag serve: error: ") and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert fragment in proc.stderr and proc.stdout == ""


def test_sigterm_finishes_the_request_in_flight_and_exits_0(server):
    """Runs last: it stops the module's server."""
    long_answer = 1500  # decode steps that outlast the signal by far, even on a fast CPU
    outcome = {}

    def slow_request():
        try:
            outcome["response"] = client(server).completions.create(
                model=server.model, prompt="Tell me everything.", max_tokens=long_answer,
                extra_body={"documents": DOCS})
        except Exception as exc:  # reported by the assertions below
            outcome["error"] = exc

    request = threading.Thread(target=slow_request)
    request.start()
    time.sleep(0.5)
    assert request.is_alive(), f"the request ended before the signal: {outcome}"
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=120) == 0, server.log.read_text()
    request.join(timeout=60)
    assert "error" not in outcome, outcome
    assert outcome["response"].choices[0].finish_reason in ("stop", "length")
    with pytest.raises(OSError):  # nothing listens any more
        urllib.request.urlopen(f"{server.url}/health", timeout=5)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary (scripts/install.sh)")
def test_shared_tier_gets_the_documents_and_sigint_exits_0(model_dir, tmp_path):
    redis = pytest.importorskip("redis", reason="the shared tier's client: pip install 'dv-hyperrag[remote]'")
    from hyperrag.testing.redis_server import RedisServer

    store = RedisServer(tmp_path)
    served = None
    try:
        served = launch(model_dir, tmp_path / "server.log", "--remote", store.url)
        response = client(served).completions.create(model=served.model, prompt="When?", max_tokens=4,
                                                     extra_body={"documents": DOCS})
        assert response.choices[0].finish_reason in ("stop", "length")
        served.proc.send_signal(signal.SIGINT)
        assert served.proc.wait(timeout=120) == 0, served.log.read_text()
        # Written back before the process ended: the system prompt's and the document's KV.
        assert redis.Redis.from_url(store.url).dbsize() >= 2
    finally:
        if served is not None and served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait()
        store.stop()
