"""A real headless Chromium driven over the Chrome DevTools protocol on a pipe (``--remote-debugging-pipe``:
commands in on fd 3, replies out on fd 4, each a JSON message ended by NUL), with no library between.

Synchronous on purpose: the status-page test calls it through ``asyncio.to_thread`` so the event loop keeps
serving the gateway the page talks to; scripts/bench_gateway.py takes the README's screenshot with it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-extensions", "--disable-background-networking", "--hide-scrollbars", "--mute-audio")


class ChromiumPage:
    """One browser with one page: ``open(url)``, ``evaluate(js)``, ``wait_for(js)``, ``screenshot(path)``."""

    def __init__(self, browser: str, profile: Path, width: int = 1280, height: int = 900) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # The browser wants the pipe at fds 3 and 4 exactly. bash puts it there (`3<&R 4>&W`) rather than a
        # preexec_fn: that would make Python fork() instead of vfork(), and grpc's fork handlers would run in
        # the child of this gRPC-using process (and abort it). Both ends go to fds >= 10 first, so that
        # neither is 3 or 4 itself when bash moves them.
        reading, writing = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chrome_r, from_chrome_w))
        for fd in (to_chrome_r, from_chrome_w):
            os.close(fd)
        bash = shutil.which("bash") or "/bin/bash"
        command = [browser, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile}",
                   f"--window-size={width},{height}", "about:blank"]
        self._process = subprocess.Popen(
            [bash, "-c", f'exec "$@" 3<&{reading} 4>&{writing}', "chromium", *command], pass_fds=(reading, writing),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(reading)
        os.close(writing)
        self._buffer = b""
        self._next_id = 0
        self._session: str | None = None

    def __enter__(self) -> ChromiumPage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """Send one command (to the page once attached) and return its result; events are skipped."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if self._session is not None and not method.startswith("Target."):
            message["sessionId"] = self._session
        try:
            os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise RuntimeError(f"chromium is gone (exit code {self._process.poll()}): {self._stderr()}") from None
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise TimeoutError("no answer from chromium in time")
            data = os.read(self._from_chrome, 1 << 20)
            if not data:
                raise RuntimeError(f"chromium closed its pipe: {self._stderr()}")
            self._buffer += data
        message, _, self._buffer = self._buffer.partition(b"\0")
        parsed: dict[str, Any] = json.loads(message)
        return parsed

    def _stderr(self) -> str:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        return self._process.stderr.read().decode(errors="replace")[-2000:] if self._process.stderr else ""

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", {"url": url})["targetId"]
        self._session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Runtime.enable")

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                html = self.evaluate("document.body.innerText")
                raise AssertionError(f"{expression} still false after {timeout}s; the page says:\n{html}")
            time.sleep(0.1)

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        """A PNG of the whole page (``full_page``) or of the window only."""
        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": full_page})["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._to_chrome, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        for fd in (self._to_chrome, self._from_chrome):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._process.stderr:
            self._process.stderr.close()
