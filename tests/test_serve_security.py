"""`xlprompt serve` safe to expose: prompts by name from --prompts-dir only, a bearer token for changes,
no server path in any answer, loopback unless a token is set, per-client limits, disconnects, SIGTERM."""
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from xlprompt.core.errors import XlpromptError
from xlprompt.serving.access import (Scrubber, bearer_matches, check_bind, check_token, is_loopback,
                                     public_model, resolve_run)
from xlprompt.serving.app import ServeSettings

from serving_runs import TEXTS, register_toy3, train_runs
from test_serve import Gate, new_bank, serving, wait_for

TOKEN = "sec-token-abcdefghijklmnop"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def layout(tiny_model_dir, toy_task, tmp_path_factory):
    """A prompts directory with two runs, a run folder outside it, and symlinks in it: one out, one in."""
    register_toy3()
    base = tmp_path_factory.mktemp("security")
    prompts = base / "prompts"
    runs = train_runs(tiny_model_dir("xlm-roberta"), prompts, ["p1", "d2"])
    outside = train_runs(tiny_model_dir("xlm-roberta"), base / "elsewhere", ["p3"])["p3"]
    (prompts / "escape").symlink_to(outside, target_is_directory=True)
    (prompts / "team").mkdir()
    (prompts / "team" / "alias").symlink_to(runs["p1"], target_is_directory=True)
    return {"base": base, "prompts": prompts, "runs": runs, "outside": outside}


@pytest.fixture(scope="module")
def secure(tiny_model_dir, layout):
    settings = ServeSettings(max_batch=8, max_wait_ms=2, max_texts=8, max_queue=64, token=TOKEN,
                             prompts_dir=layout["prompts"].resolve())
    bank = new_bank(tiny_model_dir, layout["runs"], ["p1"])
    with serving(bank, settings) as (url, app):
        yield url, app


def test_resolve_run_refuses_escapes(layout):
    root = layout["prompts"].resolve()
    assert resolve_run(root, "p1") == layout["runs"]["p1"].resolve()
    assert resolve_run(root, "team/alias") == layout["runs"]["p1"].resolve()  # a symlink that stays inside
    refused = {"../elsewhere/p3": "not a name inside", "..": "not a name inside", "p1/../d2": "not a name inside",
               str(layout["outside"]): "not a name inside", "/etc": "not a name inside", "./p1": "not a name inside",
               "p1/": "not a name inside", "a\\..\\b": "not a name inside", "escape": "leaves the prompts directory",
               "": "1-300 characters", "x" * 301: "1-300 characters", "missing": "no run folder 'missing'"}
    for run, message in refused.items():
        with pytest.raises(XlpromptError, match=message):
            resolve_run(root, run)
    with pytest.raises(XlpromptError, match="no --prompts-dir"):
        resolve_run(None, "p1")
    # no oracle: a name outside that exists and one that does not give the same answer
    messages = []
    for target in ("../elsewhere", "../nowhere-at-all"):
        with pytest.raises(XlpromptError) as err:
            resolve_run(root, target)
        messages.append(str(err.value).replace(target, "X"))
    assert messages[0] == messages[1]


def test_escapes_over_http_and_no_server_paths(secure, layout, tiny_model_dir):
    url, app = secure
    bodies = []
    server_paths = [str(layout["base"]), str(layout["base"].resolve()), str(tiny_model_dir("xlm-roberta")),
                    str(os.path.expanduser("~")), os.getcwd()]
    with httpx.Client(base_url=url, headers=AUTH) as client:
        for run in ("../elsewhere/p3", str(layout["outside"]), "escape", "/etc/passwd", "../../../../etc"):
            r = client.post("/prompts", json={"name": "evil", "run": run})
            assert r.status_code == 400, (run, r.text)
            bodies.append(r.text)
        r = client.post("/prompts", json={"name": "evil", "path": str(layout["outside"])})
        assert r.status_code == 400 and "takes no path" in r.text
        bodies.append(r.text)
        broken = layout["prompts"] / "broken"
        broken.mkdir(exist_ok=True)
        for f in layout["runs"]["d2"].iterdir():
            (broken / f.name).write_bytes(f.read_bytes())
        (broken / "config.json").write_text("{not json")
        half = layout["prompts"] / "half"
        half.mkdir(exist_ok=True)
        for name, status in [("broken", 400), ("half", 400), ("missing", 400)]:
            r = client.post("/prompts", json={"name": name})
            assert r.status_code == status, r.text
            bodies.append(r.text)
            assert name in r.json()["error"]
        r = client.post("/prompts", json={"name": "d2b", "run": "d2"})
        assert r.status_code == 201, r.text
        assert r.json()["run"] == "d2" and "path" not in r.json()
        bodies.append(r.text)
        r = client.post("/prompts", json={"name": "alias", "run": "team/alias"})
        assert r.status_code == 201 and r.json()["run"] == "p1"  # by where it resolves, inside the folder
        for path in ("/prompts", "/health", "/openapi.json", "/nowhere"):
            bodies.append(client.get(path).text)
        bodies.append(client.post("/classify", json={"prompt": "zzz", "texts": ["alpha"]}).text)
        bodies.append(client.post("/classify", json={"prompt": "p1", "texts": ["alpha"]}).text)
        bodies.append(client.delete("/prompts/alias").text)
    for body in bodies:
        for path in server_paths:
            assert path not in body, (path, body)
    health = httpx.get(url + "/health").json()
    assert health["settings"]["token"] is True and health["settings"]["prompts_dir"] is True
    assert TOKEN not in str(health)


def test_token_is_required_and_checked(secure):
    url, _ = secure
    with httpx.Client(base_url=url) as client:
        for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}):
            r = client.post("/prompts", json={"name": "d2"}, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
            assert "Authorization: Bearer TOKEN" in r.json()["error"]
            assert client.delete("/prompts/p1", headers=headers).status_code == 401
        assert "d2" not in [p["name"] for p in client.get("/prompts").json()["prompts"]]
        r = client.post("/prompts", json={"name": "d2"}, headers={"Authorization": f"bearer {TOKEN}"})
        assert r.status_code == 201, r.text
        assert client.delete("/prompts/d2", headers=AUTH).status_code == 200


def test_changes_refused_without_a_configured_token(tiny_model_dir, layout):
    settings = ServeSettings(prompts_dir=layout["prompts"].resolve())
    with serving(new_bank(tiny_model_dir, layout["runs"], ["p1"]), settings) as (url, _):
        with httpx.Client(base_url=url) as client:
            for headers in ({}, {"Authorization": "Bearer anything-at-all-here"}):
                r = client.post("/prompts", json={"name": "d2"}, headers=headers)
                assert r.status_code == 403 and "without --token" in r.json()["error"]
                assert client.delete("/prompts/p1", headers=headers).status_code == 403
            assert client.post("/classify", json={"prompt": "p1", "texts": ["alpha"]}).status_code == 200


def test_token_and_bind_rules():
    assert check_token(None) is None and check_token("") is None
    for bad in ("short", "x" * 15, "has a space in it ok", "tab\tinside-the-token", "ünïcödé-token-0123456789"):
        with pytest.raises(XlpromptError, match="at least 16 printable ASCII"):
            check_token(bad)
    assert bearer_matches(TOKEN, f"Bearer {TOKEN}") and not bearer_matches(TOKEN, None)
    assert not bearer_matches(TOKEN, f"Bearer {TOKEN[:-1]}") and not bearer_matches(TOKEN, "Bearer ")
    assert not bearer_matches(TOKEN, "Bearer ünï")  # non-ASCII header text is a mismatch, not a crash
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert is_loopback(host), host
        check_bind(host, None, False)
    for host in ("0.0.0.0", "::", "192.0.2.1", "no-such-host.invalid"):
        assert not is_loopback(host), host
        with pytest.raises(XlpromptError, match="--insecure"):
            check_bind(host, None, False)
        check_bind(host, TOKEN, False)
        check_bind(host, None, True)


def test_cli_refuses_exposed_bind_without_token(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from xlprompt.cli import app

    monkeypatch.delenv("XLPROMPT_TOKEN", raising=False)
    runner = CliRunner()
    result = runner.invoke(app, ["serve", "--name", "a=x", "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "--insecure" in result.output and "--token" in result.output
    result = runner.invoke(app, ["serve", "--name", "a=x", "--token", "short"])
    assert result.exit_code == 2 and "at least 16" in result.output
    result = runner.invoke(app, ["serve", "--name", "a=x", "--host", "0.0.0.0"], env={"XLPROMPT_TOKEN": "short"})
    assert result.exit_code == 2 and "at least 16" in result.output  # the variable is read
    result = runner.invoke(app, ["serve", "--name", "a=x", "--prompts-dir", str(tmp_path / "none")])
    assert result.exit_code == 2 and "is not a folder" in result.output


def test_scrubber_and_public_model(tmp_path):
    scrub = Scrubber(tmp_path, (str(tmp_path / "model"),))
    assert scrub(f"{tmp_path}/p1/config.json is damaged") == "p1/config.json is damaged"
    assert scrub(f"'{tmp_path}' is bad") == "'<prompts-dir>' is bad"
    assert scrub("loaded /opt/models/x/weights.bin fine") == "loaded <server path> fine"
    assert scrub("C:\\Users\\me\\run is bad") == "<server path> is bad"
    assert scrub("texts[1] has 240 characters; at most 200; label a/b") == "texts[1] has 240 characters; at most 200; label a/b"
    assert public_model(str(tmp_path)) == tmp_path.name
    assert public_model("intfloat/multilingual-e5-small") == "intfloat/multilingual-e5-small"


def test_per_client_limit_and_disconnect_drop_queued_texts(tiny_model_dir, layout):
    settings = ServeSettings(max_batch=4, max_wait_ms=0, max_queue=64, max_texts=4, max_client_texts=8)
    bank = new_bank(tiny_model_dir, layout["runs"], ["p1", "d2"])
    with serving(bank, settings) as (url, app), ThreadPoolExecutor(2) as pool, httpx.Client(base_url=url) as client:
        batcher, limits = app.state.batcher, app.state.limits
        gate = batcher.forward = Gate(batcher.forward)
        post = lambda name, n: client.post("/classify", json={"prompt": name, "texts": TEXTS[:n]})
        held = pool.submit(post, "p1", 4)  # in the worker, held by the gate
        assert gate.entered.wait(10)
        # a client that sends 3 texts and leaves before the answer
        port = int(url.rsplit(":", 1)[1])
        body = b'{"prompt": "d2", "texts": ["alpha", "beta", "yes"]}'
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(b"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            wait_for(lambda: batcher.queued == 3)
            assert limits.in_flight == {"127.0.0.1": 7}
            r = post("p1", 2)  # 7 + 2 > 8
            assert r.status_code == 429 and "at most 8 at once" in r.json()["error"] and r.headers["retry-after"]
        wait_for(lambda: batcher.queued == 0)  # dropped while the worker is still busy
        wait_for(lambda: limits.in_flight == {"127.0.0.1": 4})
        gate.release.set()
        assert held.result().status_code == 200
        assert post("p1", 1).status_code == 200
        wait_for(lambda: limits.in_flight == {})
        assert "d2" not in {name for call in gate.calls for name in call}  # the left rows never ran
        assert batcher.stats["texts"] == 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sigterm_drains_queued_requests_then_exits_0(layout):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    # the CLI's own entry point, in a process that knows the tests' toy task
    code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); import conftest; conftest._register_toy(); "
            "from xlprompt.cli import app; app()")
    command = [sys.executable, "-c", code, os.path.dirname(__file__), "serve", str(layout["runs"]["p1"]),
               "--port", str(port),
               # texts wait for a fuller batch for up to 10 min: only the drain can run them
               "--max-wait-ms", "600000", "--max-batch", "64", "--log-level", "warning", "--drain-seconds", "60"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read().decode()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        with ThreadPoolExecutor(3) as pool:
            answers = [pool.submit(httpx.post, url + "/classify", json={"prompt": "p1", "texts": TEXTS[i:i + 2]},
                                   timeout=60) for i in range(3)]
            wait_for(lambda: httpx.get(url + "/health").json()["queued_texts"] == 6, 60)  # waiting for a batch
            assert httpx.get(url + "/health").json()["batches"] == 0
            process.send_signal(signal.SIGTERM)
            stopped_accepting, deadline = False, time.monotonic() + 30
            while not stopped_accepting and time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    time.sleep(0.05)
                except OSError:
                    stopped_accepting = True
            results = [a.result(60) for a in answers]
        assert [r.status_code for r in results] == [200, 200, 200], [r.text for r in results]
        assert all(len(r.json()["predictions"]) == 2 for r in results)
        assert stopped_accepting
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# ---- limits before work (issue 27) ---------------------------------------------------------------------

def raw_request(url: str, head: bytes, body: bytes = b"", pause: float = 0.0) -> bytes:
    """Send a request by hand (a Host header, a slow body) and return the whole answer."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(head)
        if pause:
            time.sleep(pause)
        raw.sendall(body)
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and answer.split(b"\r\n\r\n", 1)[1].count(b"}") >= 1:
                break
        return answer


def test_a_loopback_server_answers_only_loopback_host_names(tiny_model_dir, layout):
    bank = new_bank(tiny_model_dir, layout["runs"], ["p1"])
    with serving(bank, ServeSettings()) as (url, app):
        port = url.rsplit(":", 1)[1].encode()
        for host in (b"localhost:" + port, b"127.0.0.1:" + port, b"[::1]:" + port, b"LOCALHOST"):
            answer = raw_request(url, b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200"), (host, answer[:80])
        # a page on evil.example whose name now resolves to 127.0.0.1 (DNS rebinding) gets nothing
        for host in (b"evil.example", b"evil.example:" + port, b"127.0.0.1.evil.example", b""):
            answer = raw_request(url, b"GET /prompts HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 421") and b"localhost" in answer, (host, answer[:80])


def test_proxy_headers_only_from_the_listed_addresses(tiny_model_dir, layout):
    """X-Forwarded-For from loopback must not mint a new client for the per-client limit, unless the
    operator lists loopback as a proxy (--forwarded-allow-ips)."""
    settings = ServeSettings(max_batch=4, max_wait_ms=0, max_queue=64, max_texts=4, max_client_texts=4)
    for trusted, second in ((None, 429), ("127.0.0.1", 200)):
        bank = new_bank(tiny_model_dir, layout["runs"], ["p1"])
        with serving(bank, settings, forwarded_allow_ips=trusted) as (url, app), ThreadPoolExecutor(2) as pool, \
                httpx.Client(base_url=url) as client:
            gate = app.state.batcher.forward = Gate(app.state.batcher.forward)
            held = pool.submit(client.post, "/classify", json={"prompt": "p1", "texts": TEXTS[:4]})
            assert gate.entered.wait(10)
            other = pool.submit(client.post, "/classify", json={"prompt": "p1", "texts": TEXTS[:1]},
                                headers={"X-Forwarded-For": "10.9.8.7"})
            if second == 429:
                assert other.result(10).status_code == 429
                assert set(app.state.limits.in_flight) == {"127.0.0.1"}
            else:
                wait_for(lambda: set(app.state.limits.in_flight) == {"127.0.0.1", "10.9.8.7"})
            gate.release.set()
            assert held.result(10).status_code == 200 and other.result(10).status_code == second


def test_a_slow_body_is_cut_off_and_oversized_or_nested_bodies_cost_nothing(tiny_model_dir, layout, caplog):
    settings = ServeSettings(body_seconds=0.5)
    bank = new_bank(tiny_model_dir, layout["runs"], ["p1"])
    with serving(bank, settings) as (url, app):
        body = b'{"prompt": "p1", "texts": ["alpha"]}'
        head = (b"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
        started = time.monotonic()
        answer = raw_request(url, head, body[:10], pause=1.5)  # never sends the rest in time
        assert answer.startswith(b"HTTP/1.1 408") and b"0.5 s" in answer
        assert time.monotonic() - started < 5
        assert raw_request(url, head, body).startswith(b"HTTP/1.1 200")  # a whole body in time is fine
        forwarded = app.state.batcher.stats["texts"]
        with httpx.Client(base_url=url) as client:
            big = client.post("/classify", content=b"x" * (settings.body_limit() + 1),
                              headers={"content-type": "application/json"})
            nested = client.post("/classify", content=b"[" * 100_000, headers={"content-type": "application/json"})
        assert big.status_code == 413 and nested.status_code == 400
        assert app.state.batcher.stats["texts"] == forwarded  # nothing reached the model
    assert "Traceback" not in caplog.text and "RecursionError" not in caplog.text


def test_auth_all_guards_inference_and_listing_but_not_health(tiny_model_dir, layout):
    with pytest.raises(XlpromptError, match="--auth all needs a token"):
        ServeSettings(auth="all")
    with pytest.raises(XlpromptError, match="Unknown --auth"):
        ServeSettings(auth="some", token=TOKEN)
    bank = new_bank(tiny_model_dir, layout["runs"], ["p1"])
    with serving(bank, ServeSettings(auth="all", token=TOKEN)) as (url, app), httpx.Client(base_url=url) as client:
        request = {"prompt": "p1", "texts": ["alpha"]}
        assert client.post("/classify", json=request).status_code == 401
        assert client.post("/classify", json=request, headers={"Authorization": "Bearer wrong-token-xxxxxxxx"}
                           ).status_code == 401
        assert client.get("/prompts").status_code == 401
        assert client.post("/classify", json=request, headers=AUTH).status_code == 200
        assert client.get("/prompts", headers=AUTH).status_code == 200
        assert client.get("/health").status_code == 200
        assert TOKEN not in client.get("/health").text
    with serving(new_bank(tiny_model_dir, layout["runs"], ["p1"]), ServeSettings(token=TOKEN)) as (url, _):
        assert httpx.post(f"{url}/classify", json={"prompt": "p1", "texts": ["alpha"]}).status_code == 200


def test_the_token_comes_from_a_file_or_the_environment_and_is_never_printed(tmp_path, layout, monkeypatch):
    from typer.testing import CliRunner

    from xlprompt.cli import app
    from xlprompt.serving.access import check_tls, read_token

    (tmp_path / "token").write_text(TOKEN + "\n")
    assert read_token(tmp_path / "token") == TOKEN and read_token(None, TOKEN) == TOKEN
    with pytest.raises(XlpromptError, match="not both"):
        read_token(tmp_path / "token", TOKEN)
    (tmp_path / "empty").write_text("\n")
    for bad, message in ((tmp_path / "empty", "is empty"), (tmp_path / "none", "cannot be read")):
        with pytest.raises(XlpromptError, match=message):
            read_token(bad)
    with pytest.raises(XlpromptError, match="both --ssl-certfile and --ssl-keyfile"):
        check_tls(tmp_path / "token", None)
    with pytest.raises(XlpromptError, match="is not a file"):
        check_tls(tmp_path / "cert.pem", tmp_path / "token")
    assert app.pretty_exceptions_show_locals is False  # a traceback would print the token among the locals
    monkeypatch.setenv("XLPROMPT_TOKEN", "short")
    result = CliRunner().invoke(app, ["serve", str(layout["runs"]["p1"]), "--port", "1"])
    assert result.exit_code == 2 and "at least 16" in result.output and "short" not in result.output.split("error")[0]


def test_each_max_length_tokenizes_with_its_own_copy(tiny_model_dir, layout):
    bank = new_bank(tiny_model_dir, layout["runs"], ["p1", "d2"])
    tokenizer, lock = bank.reader(bank.get("p1").run.config.max_length)
    assert bank.get("p1").tokenizer is tokenizer and bank.get("p1").tokenizer_lock is lock
    assert tokenizer is not bank.backbone.tokenizer  # requests never touch the tokenizer loads and calibration use
    other, other_lock = bank.reader(7)
    assert other is not tokenizer and other_lock is not lock
    assert bank.reader(7)[0] is other  # one copy per length
    short = bank.get("p1").encode(["a long sentence of many many words"] * 2)
    assert short == [bank.get("p1").encode(["a long sentence of many many words"])[0]] * 2
