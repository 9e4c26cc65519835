"""`xlprompt serve`: a real uvicorn server on a loopback port, tiny models, run folders trained here."""
import json
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
import torch

from xlprompt import load
from xlprompt.data.collate import encode_texts
from xlprompt.evaluation.evaluate import predict_encoded
from xlprompt.models.backbone import Backbone
from xlprompt.serving import PromptBank
from xlprompt.serving.app import ServeSettings, make_server
from xlprompt.serving.batcher import Batcher, Job, QueueFull

from serving_runs import TEXTS, register_toy3, train_runs

SERVED = ["p1", "p3", "d2", "d4", "h0"]  # p5 is hot-added in a test
TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextmanager
def serving(bank, settings, **server_options):
    """The app on uvicorn in a thread, on a port the OS picked (bound before the server starts: no race)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = make_server(bank, settings, log_level="warning", **server_options)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server.config.app
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


@pytest.fixture(scope="module")
def folders(tiny_model_dir, toy_task, tmp_path_factory):
    register_toy3()
    return train_runs(tiny_model_dir("xlm-roberta"), tmp_path_factory.mktemp("serve-runs"))


@pytest.fixture(scope="module")
def expected(folders, tiny_model_dir):
    """Probabilities of every run on every text, through the single-run path (Run.load + predict_encoded)."""
    backbone = Backbone.load(str(tiny_model_dir("xlm-roberta")))
    out = {}
    for name, path in folders.items():
        run = load(path, backbone=backbone)
        enc = encode_texts(backbone.tokenizer, TEXTS, [0] * len(TEXTS), run.config.max_length)
        out[name] = torch.softmax(torch.tensor(predict_encoded(run.model, enc), dtype=torch.float64), -1).numpy()
    return out


def new_bank(tiny_model_dir, folders, names=SERVED):
    bank = PromptBank(Backbone.load(str(tiny_model_dir("xlm-roberta"))), precision="fp32")
    for name in names:
        bank.add(name, folders[name])
    return bank


@pytest.fixture(scope="module")
def server(tiny_model_dir, folders):
    settings = ServeSettings(max_batch=16, max_wait_ms=5, max_queue=512, max_texts=8, max_chars=200, token=TOKEN,
                             prompts_dir=folders["p1"].parent.resolve())
    with serving(new_bank(tiny_model_dir, folders), settings) as (url, app):
        yield url


def check_answer(body, name, indices, expected):
    assert body["prompt"] == name and len(body["predictions"]) == len(indices)
    labels = body["labels"]
    for i, pred in zip(indices, body["predictions"]):
        want = expected[name][i]
        got = [pred["scores"][label] for label in labels]
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, err_msg=f"{name} {TEXTS[i]!r}")
        assert pred["label_index"] == int(np.argmax(want)) and pred["label"] == labels[pred["label_index"]]


def test_classify_prompts_health(server, expected):
    with httpx.Client(base_url=server) as client:
        r = client.post("/classify", json={"prompt": "d2", "texts": TEXTS[:3]})
        assert r.status_code == 200, r.text
        assert r.json()["labels"] == ["b", "a", "y"]
        check_answer(r.json(), "d2", [0, 1, 2], expected)
        prompts = {p["name"]: p for p in client.get("/prompts").json()["prompts"]}
        assert sorted(prompts) == sorted(SERVED)
        assert prompts["d4"]["method"] == "deep_prompt" and prompts["d4"]["prompt_length"] == 4
        assert prompts["p1"]["task"] == "toy" and prompts["p1"]["labels"] == ["beta", "alpha"]
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["prompts"] == len(SERVED) and health["batches"] >= 1
        assert health["model_kind"] == "encoder" and health["settings"]["batching"] == "mixed"
        assert health["forward_passes"] >= health["batches"] and health["settings"]["max_padding"] == 0.1
        assert health["precision"] == "fp32" and health["precision_why"] == "requested"


def test_concurrent_clients_each_get_their_results(server, expected):
    rng = random.Random(0)
    jobs = []
    for _ in range(60):
        indices = rng.sample(range(len(TEXTS)), rng.randint(1, 8))
        jobs.append((rng.choice(SERVED), indices))

    def ask(job):
        name, indices = job
        with httpx.Client(base_url=server, timeout=30) as client:
            return client.post("/classify", json={"prompt": name, "texts": [TEXTS[i] for i in indices]})

    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(ask, jobs))
    for (name, indices), r in zip(jobs, answers):
        assert r.status_code == 200, r.text
        check_answer(r.json(), name, indices, expected)


def test_bad_requests_get_clear_errors(server):
    too_long = "alpha " * 40  # 240 characters, the limit is 200
    cases = [
        ({"prompt": "nope", "texts": ["alpha"]}, 404, "Unknown prompt 'nope'; known: p1"),
        ({"prompt": "p1", "texts": []}, 400, "texts is empty"),
        ({"prompt": "p1", "texts": ["alpha", ""]}, 400, "texts[1] is empty"),
        ({"prompt": "p1", "texts": ["   "]}, 400, "texts[0] is empty"),
        ({"prompt": "p1", "texts": ["alpha"] * 9}, 413, "9 texts in one request; at most 8"),
        ({"prompt": "p1", "texts": ["alpha", too_long]}, 413, "texts[1] has 240 characters; at most 200"),
        ({"prompt": "p1", "texts": ["alpha"], "text_pairs": ["a", "b"]}, 400, "text_pairs has 2 entries"),
        ({"prompt": "p1", "texts": ["alpha"], "text_pairs": ["beta"]}, 400, "takes single texts, not text_pairs"),
        ({"prompt": "p1", "texts": "alpha"}, 422, "texts: Input should be a valid list"),
        ({"prompt": "p1", "texts": ["alpha", 5]}, 422, "texts.1: Input should be a valid string"),
        ({"prompt": 5, "texts": ["alpha"]}, 422, "prompt: Input should be a valid string"),
        ({"texts": ["alpha"]}, 422, "prompt: Field required"),
        ({"prompt": "p1", "text": ["alpha"]}, 422, "texts: Field required"),
        ([1, 2], 422, "Input should be a valid dictionary"),
    ]
    with httpx.Client(base_url=server) as client:
        for body, status, message in cases:
            r = client.post("/classify", json=body)
            assert r.status_code == status, (body, r.text)
            assert message in r.json()["error"], (body, r.json())
        r = client.post("/classify", content=b'{"prompt": "p1", "texts": [', headers={"content-type": "application/json"})
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
        r = client.post("/classify", content=b"\xff\xfe{", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
        # a body that does not say it is JSON is refused before it is read as JSON: a web page can POST
        # text/plain (or a form) across origins without a preflight, never application/json
        for kind in ("application/x-www-form-urlencoded", "text/plain", None):
            r = client.post("/classify", content=json.dumps({"prompt": "p1", "texts": ["alpha"]}),
                            headers={"content-type": kind} if kind else {})
            assert r.status_code == 415 and "Content-Type: application/json" in r.json()["error"], kind
        r = client.post("/classify", content=json.dumps({"prompt": "p1", "texts": ["alpha"]}),
                        headers={"content-type": "application/json; charset=utf-8"})
        assert r.status_code == 200 and r.json()["prompt"] == "p1"
        # nesting is refused before the parser recurses (2 KB of brackets used to answer 500)
        for body in (b"[" * 2000, b'{"prompt": "p1", "texts": ' + b"[" * 17 + b'"a"' + b"]" * 17 + b"}"):
            r = client.post("/classify", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400 and "nests deeper than 16" in r.json()["error"]
        r = client.post("/classify", content=b'{"prompt": "p1", "texts": ["[[[[[[[[[[[[[[[[[[[[[[[[[["]}',
                        headers={"content-type": "application/json"})
        assert r.status_code == 200  # brackets inside a text are text
        r = client.post("/classify", content=b"x" * 2_000_000, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "request body exceeds" in r.json()["error"]
        r = client.get("/nowhere")
        assert r.status_code == 404 and r.json()["error"]
        r = client.get("/classify")
        assert r.status_code == 405 and r.json()["error"]
        assert client.get("/health").json()["status"] == "ok"  # still serving
        assert client.post("/classify", json={"prompt": "p1", "texts": ["alpha"]}).status_code == 200


def test_chunked_body_over_the_limit_is_refused(server):
    def chunks():  # no content-length: the limit counts bytes as they arrive
        yield b'{"prompt": "p1", "texts": ["'
        for _ in range(40):
            yield b"a" * 65536
        yield b'"]}'

    with httpx.Client(base_url=server) as client:
        r = client.post("/classify", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_hot_add_and_remove(server, folders, expected):
    with httpx.Client(base_url=server, headers=AUTH) as client:
        r = client.post("/classify", json={"prompt": "p5", "texts": ["alpha"]})
        assert r.status_code == 404
        r = client.post("/prompts", json={"name": "p5"})  # the run folder p5 in the prompts directory
        assert r.status_code == 201, r.text
        assert r.json()["name"] == "p5" and r.json()["prompt_length"] == 5 and r.json()["run"] == "p5"
        r = client.post("/classify", json={"prompt": "p5", "texts": TEXTS[:4]})
        assert r.status_code == 200, r.text
        check_answer(r.json(), "p5", [0, 1, 2, 3], expected)
        assert "p5" in [p["name"] for p in client.get("/prompts").json()["prompts"]]
        r = client.post("/prompts", json={"name": "p5", "run": "p1"})
        assert r.status_code == 409 and "already loaded" in r.json()["error"]
        r = client.post("/prompts", json={"name": "ghost"})
        assert r.status_code == 400 and "no run folder 'ghost' in the prompts directory" in r.json()["error"]
        corrupt = folders["p1"].parent / "corrupt"
        corrupt.mkdir()
        for f in folders["p1"].iterdir():
            (corrupt / f.name).write_bytes(f.read_bytes())
        (corrupt / "head.safetensors").write_bytes(b"not tensors")
        r = client.post("/prompts", json={"name": "corrupt"})
        assert r.status_code == 400 and "is damaged and cannot be loaded" in r.json()["error"]
        assert str(corrupt.parent) not in r.text and "corrupt" in r.json()["error"]
        r = client.post("/prompts", json={"name": "bad/name", "run": "p1"})
        assert r.status_code == 400 and "not usable" in r.json()["error"]
        r = client.post("/prompts", json={"name": "x", "path": str(folders["p1"])})
        assert r.status_code == 400 and "takes no path" in r.json()["error"]
        r = client.post("/prompts", json={"run": "p1"})
        assert r.status_code == 422 and "name: Field required" in r.json()["error"]
        r = client.delete("/prompts/p5")
        assert r.status_code == 200 and r.json() == {"removed": "p5"}
        assert client.post("/classify", json={"prompt": "p5", "texts": ["alpha"]}).status_code == 404
        r = client.delete("/prompts/p5")
        assert r.status_code == 404 and "Unknown prompt" in r.json()["error"]


class Gate:
    """Wraps the model's forward: records which prompts each pass held, and can hold the worker."""

    def __init__(self, forward):
        self.forward, self.calls = forward, []
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, entries, ids):
        self.calls.append([e.name for e in entries])
        self.entered.set()
        assert self.release.wait(20)
        return self.forward(entries, ids)


def wait_for(condition, seconds=10):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_full_queue_answers_503_and_a_failing_run_fails_only_its_requests(tiny_model_dir, folders, expected):
    bank = new_bank(tiny_model_dir, folders, ["p1", "d2"])
    bank.add("broken", folders["d4"])

    def broken(*args):
        raise RuntimeError("head exploded")

    bank.get("broken").model.head.forward = broken
    settings = ServeSettings(max_batch=4, max_wait_ms=0, max_queue=4, max_texts=4, max_client_texts=16)
    with serving(bank, settings) as (url, app), ThreadPoolExecutor(4) as pool, httpx.Client(base_url=url) as client:
        gate = app.state.batcher.forward = Gate(app.state.batcher.forward)
        post = lambda name, idx: client.post("/classify", json={"prompt": name, "texts": [TEXTS[i] for i in idx]})
        first = pool.submit(post, "p1", [0, 1, 2, 3])       # taken by the worker, held in the gate
        assert gate.entered.wait(10)
        queued = [pool.submit(post, "broken", [4, 5]), pool.submit(post, "d2", [6, 7])]  # 4 texts wait
        wait_for(lambda: app.state.batcher.queued == 4)
        r = post("p1", [8])
        assert r.status_code == 503 and "busy" in r.json()["error"] and r.headers["retry-after"] == "1"
        gate.release.set()
        check_answer(first.result().json(), "p1", [0, 1, 2, 3], expected)
        bad, good = queued[0].result(), queued[1].result()
        # the client learns that its batch failed, not how (the log has the exception)
        assert bad.status_code == 500 and "server's log" in bad.json()["error"]
        assert "exploded" not in bad.text and "RuntimeError" not in bad.text
        assert good.status_code == 200, good.text
        check_answer(good.json(), "d2", [6, 7], expected)
        assert sorted(set(gate.calls[1])) == ["broken", "d2"]  # they did share the failed pass
        assert client.get("/health").json()["status"] == "ok"
        check_answer(post("d2", [0]).json(), "d2", [0], expected)


def test_read_only_server(tiny_model_dir, folders):
    settings = ServeSettings(allow_changes=False, token=TOKEN, prompts_dir=folders["p1"].parent)
    with serving(new_bank(tiny_model_dir, folders, ["p1"]), settings) as (url, app):
        with httpx.Client(base_url=url, headers=AUTH) as client:
            r = client.post("/prompts", json={"name": "d2"})
            assert r.status_code == 403 and "--read-only" in r.json()["error"]
            assert client.delete("/prompts/p1").status_code == 403


@pytest.mark.parametrize("mode", ["mixed", "single"])
def test_batcher_modes(mode, tiny_model_dir, folders, expected):
    """Single batching never puts two prompts in one pass; mixed does once requests of several wait."""
    bank = new_bank(tiny_model_dir, folders)
    gate = Gate(bank.forward)
    batcher = Batcher(gate, max_batch=8, max_wait=0.001, max_queue=64, mode=mode).start()
    done = []
    try:
        jobs = []
        for k, name in enumerate(["p1", "d2", "p1", "h0", "d4", "d2", "p3"]):
            indices = [k, k + 1, k + 2]
            jobs.append((name, indices, Job(bank.get(name), bank.get(name).encode([TEXTS[i] for i in indices]),
                                            done.append)))
        batcher.submit(jobs[0][2])
        assert gate.entered.wait(10)
        for _, _, job in jobs[1:]:
            batcher.submit(job)
        with pytest.raises(QueueFull):
            batcher.submit(Job(bank.get("p1"), [[0, 5, 2]] * 60, done.append))
        gate.release.set()
        wait_for(lambda: len(done) == len(jobs))
    finally:
        batcher.close()
    for name, indices, job in jobs:
        assert job.error is None
        probs = torch.softmax(torch.tensor(np.array(job.logits), dtype=torch.float64), -1).numpy()
        np.testing.assert_allclose(probs, expected[name][indices], atol=1e-5, rtol=0)
    sizes = [len(set(call)) for call in gate.calls]
    assert all(len(call) <= 8 for call in gate.calls)
    if mode == "single":
        assert max(sizes) == 1
    else:
        assert max(sizes) >= 3
    assert batcher.stats["texts"] == 3 * len(jobs)


def test_settings_are_checked():
    from xlprompt.core.errors import XlpromptError

    with pytest.raises(XlpromptError, match="--max-texts 300 exceeds --max-queue 100"):
        ServeSettings(max_texts=300, max_queue=100)
    with pytest.raises(XlpromptError, match="Unknown --batching"):
        ServeSettings(batching="sometimes")
    with pytest.raises(XlpromptError, match="--max-batch must be >= 1"):
        ServeSettings(max_batch=0)


def test_cli_serve_errors(tmp_path):
    from typer.testing import CliRunner

    from xlprompt.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["serve", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "not a complete xlprompt run folder" in result.output
    result = runner.invoke(app, ["serve", "--name", "oops"])
    assert result.exit_code == 2 and "NAME=RUN_DIR" in result.output
    result = runner.invoke(app, ["serve", "--name", "a=x", "--max-padding", "1.5"])
    assert result.exit_code == 2 and "--max-padding" in result.output
    result = runner.invoke(app, ["serve", "--name", "a=x", "--max-texts", "9", "--max-queue", "4"])
    assert result.exit_code == 2 and "--max-texts 9 exceeds --max-queue 4" in result.output
    result = runner.invoke(app, ["serve", "--name", "a=x", "--precision", "int4"])
    assert result.exit_code == 2 and "Unknown serving precision 'int4'" in result.output
    (tmp_path / "a").mkdir()
    (tmp_path / "b" / "a").mkdir(parents=True)
    result = runner.invoke(app, ["serve", str(tmp_path / "a"), str(tmp_path / "b" / "a")])
    assert result.exit_code == 2 and "--name NAME=DIR" in result.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = runner.invoke(app, ["serve", str(tmp_path / "a"), "--port", str(busy.getsockname()[1])])
    assert result.exit_code == 2 and "Cannot listen on" in result.output
