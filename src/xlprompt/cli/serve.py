"""`xlprompt serve`: run folders over HTTP on one shared frozen model (serving/ holds the service)."""
from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Optional

import typer

from ..core.errors import XlpromptError
from .app import DEVICE_HELP, DTYPE_HELP, _execution, app, console, friendly, with_settings


def _serve_settings():
    from ..serving.settings import serve_settings

    return serve_settings()


@app.command()
@friendly
@with_settings(_serve_settings)
def serve(
    settings: dict,
    run_dirs: Optional[list[Path]] = typer.Argument(None, help="Run folders to serve, each named after its folder."),
    name: Optional[list[str]] = typer.Option(None, "--name", help="NAME=RUN_DIR: serve a run under a name "
                                             "(repeatable)."),
    ensemble: Optional[list[str]] = typer.Option(None, "--ensemble", help="NAME=P1,P2,...: a name whose answers "
                                                 "average the class probabilities of loaded prompts (repeatable)."),
    model: Optional[str] = typer.Option(None, help="The one model all prompts share (default: the first run's)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 exposes it to the network: needs "
                             "--token or --insecure)."),
    port: int = typer.Option(8000),
    max_padding: float = typer.Option(0.1, help="Split a batch into length-sorted forward passes with at most "
                                      "this fraction of padded positions (1: one pass, for GPUs)."),
    read_only: bool = typer.Option(False, "--read-only", help="Refuse POST/DELETE /prompts."),
    prompts_dir: Optional[Path] = typer.Option(None, help="Folder of run folders that POST /prompts may load, "
                                               "by name (without it, prompts cannot be added while serving)."),
    token_file: Optional[Path] = typer.Option(None, help="File whose first line is the bearer token (or set "
                                              "XLPROMPT_TOKEN); without one POST/DELETE /prompts answer 403."),
    token: Optional[str] = typer.Option(None, envvar="XLPROMPT_TOKEN", show_default=False, show_envvar=False,
                                        help="The token itself (visible in process listings: prefer --token-file "
                                        "or XLPROMPT_TOKEN)."),
    auth: Optional[str] = typer.Option(None, help="What the token guards: all (every endpoint but /health) or "
                                       "write (POST/DELETE /prompts). Default: all on a non-loopback --host, else "
                                       "write."),
    insecure: bool = typer.Option(False, "--insecure", help="Listen on a non-loopback --host without a token."),
    ssl_certfile: Optional[Path] = typer.Option(None, help="TLS certificate (PEM): serve https."),
    ssl_keyfile: Optional[Path] = typer.Option(None, help="TLS private key (PEM) for --ssl-certfile."),
    forwarded_allow_ips: Optional[str] = typer.Option(None, help="Proxies whose X-Forwarded-For is trusted "
                                                      "(comma-separated addresses); default none, so each "
                                                      "client is known by its own address."),
    threads: Optional[int] = typer.Option(None, help="torch threads (default: torch's choice)."),
    engine: str = typer.Option("auto", help="Backbone engine: auto | torch | onnx (ONNX Runtime, fp32; "
                               "pip install 'xlprompt[onnx]')."),
    precision: str = typer.Option("auto", help="auto | fp32 | int8-checked: int8 with close calls rerun in fp32, "
                                  "each prompt calibrated on its training language's dev set when added. auto: the "
                                  "execution plan's choice for this CPU (bf16 weights, int8-checked or fp32; "
                                  "`xlprompt plan --purpose serve`)."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
):
    """Serve run folders over HTTP on one shared frozen model: POST /classify, GET/POST/DELETE /prompts, GET /health."""
    from ..engine import check_engine
    from ..serving.multi import PromptBank
    from ..serving.served import check_max_padding, check_serving_precision, name_runs
    from ..serving.access import check_bind, check_prompts_dir, check_tls, is_loopback, read_token
    from ..serving.app import ServeSettings, check_port, make_server  # says which extra is missing
    token = read_token(token_file, token)
    settings = ServeSettings(**settings, allow_changes=not read_only, token=token,
                             prompts_dir=check_prompts_dir(prompts_dir),
                             auth=auth or ("all" if token and not is_loopback(host) else "write"))
    check_bind(host, settings.token, insecure)
    check_tls(ssl_certfile, ssl_keyfile)
    check_max_padding(max_padding)
    execution = _execution(device, dtype)
    check_engine(engine)
    check_serving_precision(precision)
    runs = name_runs(run_dirs or [], name or [])
    if threads is not None:
        import torch

        torch.set_num_threads(max(1, threads))
    check_port(host, port)
    started = time.perf_counter()
    ensembles = dict(item.partition("=")[::2] for item in ensemble or [])
    if any(not n or not m for n, m in ensembles.items()):
        raise XlpromptError("--ensemble takes NAME=PROMPT1,PROMPT2,... naming loaded prompts.")
    bank = PromptBank.from_runs(runs, model=model, max_padding=max_padding, engine=engine, precision=precision,
                                **execution)
    for name, members in ensembles.items():
        bank.add_ensemble(name, [m.strip() for m in members.split(",") if m.strip()])
    console.print(f"loaded {bank.backbone.name} on {bank.backbone.device} and {len(runs)} prompts "
                  f"({', '.join(runs) or 'none yet'}{'; ensembles ' + ', '.join(ensembles) if ensembles else ''}) in "
                  f"{time.perf_counter() - started:.1f}s · {settings.batching} batching · engine {bank.engine} · "
                  f"{str(bank.backbone.dtype).replace('torch.', '')} weights · precision {bank.precision}"
                  f"{' (' + bank.precision_why + ')' if precision == 'auto' else ''} · "
                  f"{'https' if ssl_certfile else 'http'}://{host}:{port} · token guards "
                  f"{'nothing' if settings.token is None else settings.auth}",
                  highlight=False, soft_wrap=True)
    # uvicorn drains on SIGTERM, then re-raises the signal to the handler found before it: a no-op, so a
    # drained shutdown exits 0
    signal.signal(signal.SIGTERM, lambda *_: None)
    make_server(bank, settings, host, port, log_level, forwarded_allow_ips=forwarded_allow_ips,
                ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
                ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None).run()
