"""One exception type for every user-facing mistake: the CLI prints its message, never a traceback."""


class XlpromptError(Exception):
    """Bad input or a missing resource; the message says what to do next."""


class WriteFailed(XlpromptError, OSError):
    """A file could not be written (disk full, read-only folder, ...). Writes are atomic, so the file that
    was there before is unchanged; also an OSError, for callers that treat a failed write as a soft miss."""

    def __init__(self, path, exc: OSError):
        OSError.__init__(self, exc.errno, exc.strerror or str(exc))
        self.path = path
        self.message = (f"Could not write {path} ({exc.strerror or exc}): free disk space or make the folder "
                        f"writable, then run again; the previous {getattr(path, 'name', path)} (if any) is unchanged.")

    def __str__(self) -> str:
        return self.message
