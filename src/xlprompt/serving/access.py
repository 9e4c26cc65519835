"""Who may do what on `xlprompt serve`, and what an answer may reveal.

- Prompts are added by name from one prompts directory given at start; a name that leaves it (`..`, an
  absolute path, a symlink pointing out) is refused without saying whether the target exists.
- `POST`/`DELETE /prompts` need `Authorization: Bearer TOKEN`, compared in constant time; a server
  started without a token refuses them (403). With `--auth all` (the default on a non-loopback address)
  every endpoint but /health needs it. The token comes from `--token-file` or XLPROMPT_TOKEN (argv is
  visible to every user of the machine) and is never printed.
- A non-loopback address is refused without a token unless the operator says `--insecure`.
- One client may have at most `max_client_texts` texts queued or in a batch at once.
- Error messages are scrubbed of server paths before they are sent; 5xx answers carry no exception text.
- Proxy headers are trusted only from `--forwarded-allow-ips`; a loopback server answers only loopback
  Host names (DNS rebinding).
"""
from __future__ import annotations

import hmac
import ipaddress
import os
import re
import socket
from pathlib import Path

from ..core.errors import XlpromptError
from .served import NAME_CHARS

MIN_TOKEN_CHARS = 16
TOKEN_HINT = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def check_token(token: str | None) -> str | None:
    """The configured token (None: mutating endpoints are off); a short or odd one is refused."""
    if token is None or token == "":
        return None
    if len(token) < MIN_TOKEN_CHARS or not token.isascii() or not token.isprintable() or " " in token:
        raise XlpromptError(f"--token (or XLPROMPT_TOKEN) must be at least {MIN_TOKEN_CHARS} printable ASCII "
                            f"characters without spaces: make one with {TOKEN_HINT}.")
    return token


def read_token(token_file: str | os.PathLike | None, token: str | None = None) -> str | None:
    """The token from `--token-file` (its first line), else `--token`/XLPROMPT_TOKEN; both is an error."""
    if token_file is None:
        return token
    if token:
        raise XlpromptError("Give the token once: --token-file or --token/XLPROMPT_TOKEN, not both.")
    try:
        lines = Path(token_file).expanduser().read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise XlpromptError(f"--token-file {token_file} cannot be read ({type(exc).__name__}): give a text file "
                            "whose first line is the token.") from None
    if not lines or not lines[0].strip():
        raise XlpromptError(f"--token-file {token_file} is empty: its first line must be the token.")
    return lines[0].strip()


def check_tls(certfile: str | os.PathLike | None, keyfile: str | os.PathLike | None) -> None:
    if (certfile is None) != (keyfile is None):
        raise XlpromptError("TLS needs both --ssl-certfile and --ssl-keyfile.")
    for option, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
        if path is not None and not Path(path).expanduser().is_file():
            raise XlpromptError(f"{option} {path} is not a file.")


def bearer_matches(expected: str, header: str | None) -> bool:
    """`Authorization: Bearer TOKEN` against the configured token, in time independent of where they differ."""
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        given = ""
    return hmac.compare_digest(given.strip().encode("utf-8", "replace"), expected.encode("utf-8"))


def is_loopback(host: str) -> bool:
    """True when every address `host` resolves to is a loopback one (an unresolvable host is not)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return False
    try:
        return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)
    except ValueError:
        return False


def check_bind(host: str, token: str | None, insecure: bool) -> None:
    if token is None and not insecure and not is_loopback(host):
        raise XlpromptError(f"--host {host} is reachable from other machines, and no --token (or XLPROMPT_TOKEN) "
                            f"is set: give one (make it with {TOKEN_HINT}), or pass --insecure to serve "
                            "without one anyway.")


def check_prompts_dir(path: str | os.PathLike | None) -> Path | None:
    if path is None:
        return None
    root = Path(path).expanduser()
    if not root.is_dir():
        raise XlpromptError(f"--prompts-dir {root} is not a folder: give the folder that holds the run folders "
                            "clients may load.")
    return root.resolve()


def resolve_run(root: Path | None, run: str) -> Path:
    """The run folder `run` names inside the prompts directory `root` (already resolved)."""
    if root is None:
        raise XlpromptError("this server has no --prompts-dir: prompts cannot be added while it runs.")
    if not isinstance(run, str) or not 0 < len(run) <= 300:
        raise XlpromptError("run must be a name of 1-300 characters inside the prompts directory.")
    parts = run.split("/")
    if run.startswith("/") or any(p in ("", ".", "..") or not set(p) <= NAME_CHARS for p in parts):
        raise XlpromptError(f"run {run!r} is not a name inside the prompts directory: use folder names of "
                            "letters, digits, '.', '_' or '-', separated by '/', without '..'.")
    path = (root / run).resolve()
    if not path.is_relative_to(root):
        raise XlpromptError(f"run {run!r} leaves the prompts directory (a symlink out of it): only folders "
                            "inside it can be loaded.")
    if not path.is_dir():
        raise XlpromptError(f"no run folder {run!r} in the prompts directory: GET /prompts lists what is loaded; "
                            "the operator puts run folders into the prompts directory.")
    return path


class ClientLimit:
    """Texts each client has queued or in a batch (event-loop side only: no lock needed)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_flight: dict[str, int] = {}

    def take(self, client: str, texts: int) -> bool:
        held = self.in_flight.get(client, 0)
        if held + texts > self.limit:
            return False
        self.in_flight[client] = held + texts
        return True

    def give(self, client: str, texts: int) -> None:
        left = self.in_flight.get(client, 0) - texts
        if left > 0:
            self.in_flight[client] = left
        else:
            self.in_flight.pop(client, None)


# an absolute POSIX path of two or more components, or a Windows drive path
# (a component may hold single spaces when another component follows it: "/srv/my models/run")
_PART = r"[^\s'\"/,;:()\[\]{}<>]+"
_PATH = re.compile(rf"(?<![\w/.~-])(?:/(?:{_PART}(?: {_PART})*(?=/)|{_PART})){{2,}}/?|\b[A-Za-z]:\\[^\s'\",;()]+")


def public_model(name: str) -> str:
    """A model as clients may see it: a hub id as is, a local folder by its folder name only."""
    if os.path.isabs(name) or name.startswith(("~", ".")) or Path(name).expanduser().is_dir():
        return Path(name).name or "local model"
    return name


class Scrubber:
    """Removes server paths from text sent to clients: run folders become their name inside the prompts
    directory, other known folders a placeholder, and any absolute path left `<server path>`."""

    def __init__(self, prompts_dir: Path | None = None, others: tuple = ()):
        self.known: list[tuple[str, str]] = []
        if prompts_dir is not None:
            self.known += [(str(prompts_dir) + os.sep, ""), (str(prompts_dir), "<prompts-dir>")]
        for path in others:
            if path:
                self.known.append((str(path), "<server path>"))
        self.known.sort(key=lambda kv: -len(kv[0]))

    def __call__(self, text: str) -> str:
        for path, replacement in self.known:
            text = text.replace(path, replacement)
        return _PATH.sub("<server path>", text)
