"""The feedback tokens of the queries this user asked: `dellm ask` keeps each query's token next to its
id, and `dellm feedback QUERY_ID` presents it (the coordinator takes feedback only from the asker).

One small JSON file in the user's state folder ($XDG_STATE_HOME/dellm, else ~/.local/state/dellm),
mode 0600, replaced atomically, holding the latest ``MAX_KEPT`` queries.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

MAX_KEPT = 500
FILE_NAME = "feedback_tokens.json"


def default_path() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "dellm" / FILE_NAME


class FeedbackTokens:
    """Query id -> feedback token, newest last; an unreadable file reads as empty (the tokens are a
    convenience: `dellm feedback --feedback-token` works without them)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_path()

    def _load(self) -> dict[str, str]:
        try:
            loaded = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return {}
        return {str(k): v for k, v in loaded.items() if isinstance(v, str)} if isinstance(loaded, dict) else {}

    def get(self, query_id: str) -> str:
        return self._load().get(query_id, "")

    def put(self, query_id: str, token: str) -> str | None:
        """Keep ``token`` for ``query_id``; None, or why it could not be kept (the answer matters more)."""
        tokens = self._load()
        tokens.pop(query_id, None)
        tokens[query_id] = token
        kept = dict(list(tokens.items())[-MAX_KEPT:])
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(kept, out)
            tmp.replace(self.path)
        except OSError as exc:
            return f"{self.path}: {exc.strerror or exc}"
        return None
