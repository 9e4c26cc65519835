"""What `xlprompt serve` is configured by: each limit declared once (default, help), read by the CLI's
options (cli/serve.py), the HTTP app (app.py) and the batching worker's defaults (batcher.py).

No FastAPI here: the CLI builds its options without the serving extra installed."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.errors import XlpromptError
from ..core.settings import declared, setting

MODES = ("mixed", "single")
AUTH_MODES = ("write", "all")


@dataclass
class ServeSettings:
    max_batch: int = setting(64, "Texts per forward pass.")
    max_wait_ms: float = setting(10.0, "How long the oldest waiting text may wait for a batch to fill.")
    max_queue: int = setting(1024, "Texts that may wait for the model; beyond that requests get 503.")
    max_texts: int = setting(256, "Texts per request.")
    max_chars: int = setting(2000, "Characters per text.")
    batching: str = setting("mixed", "mixed: one forward pass mixes prompts; single: one prompt per pass "
                            "(the baseline).")
    allow_changes: bool = setting(True, "POST/DELETE /prompts (they also need a token).", cli=False)
    token: str | None = field(default=None, repr=False)  # bearer token for POST/DELETE /prompts
    prompts_dir: Path | None = None  # POST /prompts loads run folders from here only, by name
    max_client_texts: int | None = setting(None, "Texts one client may have waiting or in a batch.", kind="int",
                                           none_shows="half of --max-queue")
    drain_seconds: float = setting(10.0, "On SIGTERM: stop accepting, let queued requests finish within this "
                                   "many seconds, exit 0.")
    # write: the token guards POST/DELETE /prompts; all: every endpoint but /health (the CLI's default
    # depends on --host, so the command resolves it)
    auth: str = setting("write", "What the token guards: all or write.", cli=False)
    body_seconds: float = setting(10.0, "Seconds a request body may take to arrive (else 408).")
    max_connections: int = setting(512, "Connections and requests at once; beyond it: 503.")
    # Host headers a request may carry (None: any). A loopback server allows only loopback names, so a web
    # page whose domain re-resolves to 127.0.0.1 (DNS rebinding) cannot read its answers
    allowed_hosts: tuple[str, ...] | None = None

    def __post_init__(self):
        from .access import check_token  # access reads run folders (torch); the CLI's options need none of it

        self.token = check_token(self.token)
        if self.prompts_dir is not None:  # compared with resolved run folders: symlinks and `..` are gone there
            self.prompts_dir = Path(self.prompts_dir).expanduser().resolve()
        if self.max_client_texts is None:
            self.max_client_texts = max(self.max_texts, self.max_queue // 2)
        if self.max_client_texts < self.max_texts:
            raise XlpromptError(f"--max-client-texts {self.max_client_texts} is below --max-texts {self.max_texts}: "
                                "a full request could never be queued.")
        if self.drain_seconds < 0:
            raise XlpromptError(f"--drain-seconds must be >= 0, got {self.drain_seconds}.")
        for name in ("max_batch", "max_queue", "max_texts", "max_chars"):
            if getattr(self, name) < 1:
                raise XlpromptError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}.")
        if self.max_wait_ms < 0:
            raise XlpromptError(f"--max-wait-ms must be >= 0, got {self.max_wait_ms}.")
        if self.max_texts > self.max_queue:
            raise XlpromptError(f"--max-texts {self.max_texts} exceeds --max-queue {self.max_queue}: a full request "
                                "could never be queued.")
        if self.batching not in MODES:
            raise XlpromptError(f"Unknown --batching {self.batching!r}: use mixed or single.")
        if self.auth not in AUTH_MODES:
            raise XlpromptError(f"Unknown --auth {self.auth!r}: use all (every endpoint but /health needs the "
                                "token) or write (only POST/DELETE /prompts do).")
        if self.auth == "all" and self.token is None:
            raise XlpromptError("--auth all needs a token (--token-file FILE or XLPROMPT_TOKEN): without one "
                                "nobody could classify.")
        if self.body_seconds <= 0 or self.max_connections < 1:
            raise XlpromptError("--body-seconds must be > 0 and --max-connections >= 1.")

    def public(self) -> dict:
        """The settings as /health shows them: whether a token and a prompts directory are set, not what."""
        out = {k: v for k, v in asdict(self).items() if k not in ("token", "prompts_dir", "allowed_hosts")}
        return {**out, "token": self.token is not None, "prompts_dir": self.prompts_dir is not None}

    def body_limit(self) -> int:
        """Bytes a largest valid request can take: texts and pairs, each char up to 6 bytes as a JSON escape."""
        return 2 * self.max_texts * (6 * self.max_chars + 8) + 65536


def serve_settings() -> dict:
    """name -> Setting of the server's options that are command-line options."""
    return {k: s for k, s in declared(ServeSettings).items() if s.cli}


def default(name: str):
    return declared(ServeSettings)[name].default
