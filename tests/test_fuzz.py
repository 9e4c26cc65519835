"""Property-based fuzzing (Hypothesis): own-data files, grid files, run folders and HTTP bodies.

Property for every input: a valid result, or one XlpromptError (an HTTP 4xx) whose message names what to
fix; never another exception, a hang, or a file written. Examples per target: XLPROMPT_FUZZ_EXAMPLES
(default 40, small enough for CI); e.g. `XLPROMPT_FUZZ_EXAMPLES=2000 pytest tests/test_fuzz.py` for a
long run.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from xlprompt.data.custom import CustomSpec, custom_label_names, load_custom
from xlprompt.core.errors import XlpromptError
from xlprompt.experiments.grid import expand_grid
from xlprompt.runs.run import Run
from xlprompt.serving.served import read_servable_config

EXAMPLES = int(os.environ.get("XLPROMPT_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("XLPROMPT_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
HANG_SECONDS = 20


@contextmanager
def within(seconds: float = HANG_SECONDS):
    """Fail (not hang) when the body runs longer than `seconds` (SIGALRM: the main thread only)."""
    def timeout(*_):
        raise TimeoutError(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def listing(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def valid_or_clear(fn, root: Path):
    """fn() or an XlpromptError with a message; nothing written under root either way."""
    before = listing(root)
    try:
        with within():
            result = fn()
    except XlpromptError as exc:
        assert str(exc).strip(), "an error without a message"
        result = exc
    event("outcome: " + ("XlpromptError" if isinstance(result, XlpromptError) else "valid result"))
    assert listing(root) == before, "the input was changed or a file written"
    return result


# ----------------------------------------------------------------------------------------- own data

FIELD_CHARS = st.sampled_from(["a", "b", " ", "\t", ",", '"', "'", "\n", "\r", "\r\n", "\x00", "\ufeff", "é",
                               "\u2028", "{", "}", ":", "\\", "label", "text", "x" * 5000, "日本", "\udcff"])
field = st.lists(FIELD_CHARS, max_size=6).map("".join)
ENCODINGS = ["utf-8", "utf-8-sig", "latin-1", "utf-16", "cp1252"]


@st.composite
def table_bytes(draw, fmt: str) -> bytes:
    """A header and rows in the format, with hostile fields, line endings and encodings; or raw bytes."""
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return draw(st.binary(max_size=300))
    if choice <= 2:  # valid tables with hostile content: quotes, BOM, CRLF, NULs, long fields, any script
        safe = FIELD_CHARS.filter(lambda c: c not in ("\udcff", "\ufeff") and (fmt != "tsv" or not set(c) & set("\t\r\n")))
        text = st.lists(safe, max_size=5).map(lambda parts: "t" + "".join(parts).replace("\r", " "))
        rows = [(draw(text), label) for label in ("0", "1")] + draw(st.lists(st.tuples(text, st.sampled_from(["0", "1"])),
                                                                             max_size=6))
        newline = draw(st.sampled_from(["\n", "\r\n"]))
        if fmt == "jsonl":
            lines = [json.dumps({"text": t, "label": y}, ensure_ascii=draw(st.booleans())) for t, y in rows]
        elif fmt == "tsv":
            lines = ["text\tlabel"] + [f"{t}\t{y}" for t, y in rows]
        else:
            lines = ["text,label"] + ['"' + t.replace('"', '""') + f'",{y}' for t, y in rows]
        return (newline.join(lines) + newline).encode(draw(st.sampled_from(["utf-8", "utf-8-sig"])))
    header = draw(st.sampled_from([["text", "label"], ["label", "text"], ["text"], ["text", "label", "extra"],
                                   draw(st.lists(field, min_size=1, max_size=3))]))
    rows = draw(st.lists(st.lists(field, min_size=0, max_size=4), max_size=8))
    if draw(st.booleans()):  # mostly well-formed rows, so the later checks are reached too
        rows = [[draw(st.sampled_from(["good text", "other words", ""])), draw(st.sampled_from(["0", "1", "2", ""]))]
                for _ in range(draw(st.integers(0, 8)))] + rows
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    if fmt == "jsonl":
        lines = [json.dumps(dict(zip(header, r))) if draw(st.booleans()) else json.dumps(r) for r in rows]
        lines.insert(0, json.dumps(dict(zip(header, header))))
    else:
        sep = "\t" if fmt == "tsv" else ","
        quote = (lambda f: f) if fmt == "tsv" or draw(st.booleans()) else (lambda f: '"' + f.replace('"', '""') + '"')
        lines = [sep.join(quote(f) for f in line) for line in [header] + rows]
    text = newline.join(lines) + draw(st.sampled_from(["", newline, "\x00"]))
    encoding = draw(st.sampled_from(ENCODINGS))
    return text.encode(encoding, errors="surrogatepass" if encoding.startswith("utf") else "replace")


@pytest.mark.parametrize("fmt", ["tsv", "csv", "jsonl"])
@FUZZ
@given(data=st.data())
def test_own_data_readers(fmt, data):
    train = data.draw(table_bytes(fmt), label="train")
    test = data.draw(table_bytes(fmt), label="test")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "eng").mkdir()
        (root / "eng" / f"train.{fmt}").write_bytes(train)
        (root / "eng" / f"test.{fmt}").write_bytes(test)
        spec = CustomSpec(path=str(root))

        def read():
            names = custom_label_names(spec, "eng")
            assert names and all(isinstance(n, str) and n for n in names)
            frames = [load_custom(spec, split, "eng", names) for split in ("train", "test")]
            try:  # dev: hash buckets 90-99 of train, empty for most small tables
                frames.append(load_custom(spec, "dev", "eng", names))
            except XlpromptError as exc:
                assert "has no dev rows" in str(exc), str(exc)
            for frame in frames:
                assert list(frame.columns[:3]) == ["index_id", "text", "label"]
                assert frame["label"].between(0, len(names) - 1).all()
            return frames

        out = valid_or_clear(read, root)
        if isinstance(out, XlpromptError):
            assert str(root) in str(out) or "Own data" in str(out) or "label" in str(out), str(out)


# ----------------------------------------------------------------------------------------------- grids

GRID_KEYS = ["task", "model", "method", "lr", "epochs", "shots", "seed", "length", "languages", "batch_size",
             "freeze_model", "bogus", "reparam", "train_language", "max_length", "warmup", "init"]
scalar = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(allow_nan=True),
                   st.sampled_from(["sib200", "prompt", "deep_prompt", "all", "eng_Latn", "finetune", "", "mlp",
                                    "multilingual-e5-small", "eng_Latn,deu_Latn", "head", "run:/nonexistent"]),
                   st.text(max_size=8))
value = st.one_of(scalar, st.lists(scalar, max_size=6), st.dictionaries(st.text(max_size=4), scalar, max_size=3))
settings_table = st.dictionaries(st.sampled_from(GRID_KEYS), value, max_size=6)
grid_dict = st.fixed_dictionaries({}, optional={
    "fixed": st.one_of(settings_table, value), "axes": st.one_of(settings_table, st.lists(settings_table, max_size=3),
                                                                value),
    "junk": value, "store": value, "name": value})


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v != v:
        return "nan"
    if isinstance(v, float) and v in (float("inf"), float("-inf")):
        return "inf" if v > 0 else "-inf"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v if x is not None) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items() if x is not None) + "}"
    return '""'


def to_toml(grid: dict) -> str:
    lines = []
    for section, body in grid.items():
        if isinstance(body, dict):
            lines.append(f"[{section}]")
            lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in body.items() if v is not None]
        elif isinstance(body, list) and all(isinstance(b, dict) for b in body):
            for b in body:
                lines.append(f"[[{section}]]")
                lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in b.items() if v is not None]
        elif body is not None:
            lines.insert(0, f"{json.dumps(section)} = {toml_value(body)}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("suffix", [".toml", ".yaml"])
@FUZZ
@given(grid=grid_dict, noise=st.one_of(st.none(), st.binary(max_size=200), st.text(max_size=200)),
       cut=st.integers(0, 400))
def test_grid_files(suffix, grid, noise, cut):
    import yaml

    if noise is None:
        text = to_toml(grid) if suffix == ".toml" else yaml.safe_dump(grid, allow_unicode=True)
        raw = text.encode("utf-8")
        raw = raw[:cut] if cut < len(raw) and cut % 3 == 0 else raw  # sometimes truncated
    else:
        raw = noise if isinstance(noise, bytes) else noise.encode("utf-8", "surrogatepass")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"grid{suffix}"
        path.write_bytes(raw)
        out = valid_or_clear(lambda: expand_grid(path), Path(tmp))
    if not isinstance(out, XlpromptError):
        assert all(spec.run_id for spec in out)


# ----------------------------------------------------------------------------------------- run folders

@pytest.fixture(scope="module")
def saved_run(tiny_model_dir, toy_task, tmp_path_factory):
    from serving_runs import train_run
    from xlprompt.models.backbone import Backbone
    from xlprompt.prompts.config import InputPromptConfig

    model = tiny_model_dir("xlm-roberta")
    path = train_run(model, tmp_path_factory.mktemp("fuzz-run") / "run", "toy", InputPromptConfig(prompt_length=2))
    return path, Backbone.load(str(model))


JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6)),
                    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner,
                                                                                         max_size=4)), max_leaves=10)


@st.composite
def damage(draw, files: list[str]):
    """(file, how, argument) edits to apply to a copy of a run folder."""
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(files))
        how = draw(st.sampled_from(["truncate", "flip", "delete", "json_value", "json_key", "replace"]))
        edits.append((name, how, draw(st.integers(0, 10**6)), draw(JSON), draw(st.binary(max_size=64))))
    return edits


def apply(folder: Path, edit) -> None:
    name, how, n, value, junk = edit
    path = folder / name
    if not path.exists():
        return
    raw = path.read_bytes()
    if how == "truncate":
        path.write_bytes(raw[:n % (len(raw) + 1)])
    elif how == "flip" and raw:
        i = n % len(raw)
        path.write_bytes(raw[:i] + bytes([raw[i] ^ (1 + n % 255)]) + raw[i + 1:])
    elif how == "delete":
        path.unlink()
    elif how == "replace":
        path.write_bytes(junk)
    elif name.endswith(".json"):
        try:
            data = json.loads(raw)
        except ValueError:
            return
        if isinstance(data, dict) and data:
            keys = sorted(data)
            key = keys[n % len(keys)]
            if how == "json_value":
                data[key] = value
            else:
                data.pop(key)
            if isinstance(data.get("method"), dict) and n % 2:  # reach into the method config too
                method_keys = sorted(data["method"]) or ["type"]
                data["method"][method_keys[n % len(method_keys)]] = value
        path.write_text(json.dumps(data))


@FUZZ
@given(data=st.data())
def test_run_folders(saved_run, data):
    source, backbone = saved_run
    files = sorted(p.name for p in source.iterdir())
    edits = data.draw(damage(files))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "run"
        shutil.copytree(source, folder)
        for edit in edits:
            apply(folder, edit)
        out = valid_or_clear(lambda: (read_servable_config(folder), Run.load(folder, backbone=backbone))[1],
                             Path(tmp))
        if isinstance(out, XlpromptError):
            assert str(folder) in str(out), str(out)  # names the folder to look at
        else:
            assert out.config.task == "toy"


# ------------------------------------------------------------------------------------------ HTTP API

TOKEN = "fuzz-token-0123456789abcd"


@pytest.fixture(scope="module")
def api(saved_run, tmp_path_factory):
    from test_serve import serving
    from xlprompt.serving import PromptBank
    from xlprompt.serving.app import ServeSettings

    source, backbone = saved_run
    bank = PromptBank(backbone, precision="fp32")
    bank.add("p", source)
    settings = ServeSettings(max_texts=8, max_chars=300, max_queue=64, token=TOKEN,
                             prompts_dir=source.parent.resolve())
    with serving(bank, settings) as (url, app), httpx.Client(base_url=url, timeout=HANG_SECONDS) as client:
        yield client, source.parent


texts = st.lists(st.one_of(st.text(max_size=40), st.sampled_from(["alpha w1", "beta", " ", "x" * 400])), max_size=10)
classify_body = st.one_of(
    st.fixed_dictionaries({"prompt": st.sampled_from(["p", "q", "", "../p"]), "texts": texts},
                          optional={"text_pairs": st.one_of(st.none(), texts), "extra": JSON}),
    JSON)
prompt_body = st.one_of(
    st.fixed_dictionaries({"name": st.one_of(st.text(max_size=12), st.sampled_from(["run", "p", "..", "a/b"]))},
                          optional={"run": st.one_of(st.text(max_size=20), st.sampled_from(
                              ["run", "../run", "/etc", "run/..", "./run", "run/./", "%2e%2e"])), "path": JSON}),
    JSON)


def check_answer(r: httpx.Response, prompts_dir: Path) -> None:
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert isinstance(r.json()["error"], str) and r.json()["error"].strip()
    elif r.status_code < 300:
        assert isinstance(r.json(), dict)
    assert str(prompts_dir) not in r.text and str(prompts_dir.resolve()) not in r.text


@FUZZ
@given(body=st.one_of(classify_body.map(lambda b: json.dumps(b).encode()), st.binary(max_size=200)),
       content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"]))
def test_http_classify_bodies(api, body, content_type):
    client, prompts_dir = api
    with within():
        r = client.post("/classify", content=body, headers={"content-type": content_type})
    check_answer(r, prompts_dir)
    event(f"status {r.status_code}")
    if r.status_code == 200:
        assert len(r.json()["predictions"]) == len(json.loads(body)["texts"])


@FUZZ
@given(body=st.one_of(prompt_body.map(lambda b: json.dumps(b).encode()), st.binary(max_size=100)),
       auth=st.sampled_from([f"Bearer {TOKEN}", "", "Bearer x", TOKEN]),
       victim=st.one_of(st.text(max_size=10), st.sampled_from(["p", "run", "..", "%2F"])))
def test_http_prompt_bodies(api, body, auth, victim):
    client, prompts_dir = api
    before = listing(prompts_dir)
    with within():
        r = client.post("/prompts", content=body, headers={"authorization": auth, "content-type": "application/json"})
        check_answer(r, prompts_dir)
        event(f"status {r.status_code}")
        if r.status_code == 201:  # a real run folder inside the prompts directory: take it out again
            assert r.json()["run"] == "run"
            assert client.delete(f"/prompts/{r.json()['name']}", headers={"authorization": auth}).status_code == 200
        if victim != "p":
            d = client.delete(f"/prompts/{quote(victim, safe='')}", headers={"authorization": auth})
            check_answer(d, prompts_dir)
            if d.status_code == 200:
                client.post("/prompts", json={"name": d.json()["removed"], "run": "run"},
                            headers={"authorization": auth})
    assert listing(prompts_dir) == before


@pytest.mark.parametrize("fmt,content", [("csv", b'""'), ("csv", b'"",""\r\n'), ("tsv", b"\t\t\n")])
def test_a_table_of_only_empty_fields_is_a_clear_error(tmp_path, fmt, content):
    """Found by the fuzzer: these used to raise IndexError."""
    (tmp_path / "eng").mkdir()
    (tmp_path / "eng" / f"train.{fmt}").write_bytes(content)
    with pytest.raises(XlpromptError, match="has no header line|is empty"):
        custom_label_names(CustomSpec(path=str(tmp_path)), "eng")
