"""A headless Chromium driven over the Chrome DevTools Protocol (aiohttp's websocket client; no extra Python package).

    with Browser.launch(tmpdir) as b:
        b.open("http://127.0.0.1:8188/")
        b.evaluate("1 + 1")            # -> 2 (promises are awaited)
        b.screenshot(path)
        b.errors()                     # uncaught JS exceptions and console errors seen so far
        b.responses                    # (status, url) of every HTTP response the page received

The browser is Debian's `chromium` (apt), started with a fresh profile and stopped by its PID.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import aiohttp
import requests

FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--remote-debugging-port=0",
         "--window-size=1600,1000"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(AssertionError):
    pass


class Browser:
    def __init__(self, proc: subprocess.Popen, port: int, ws_url: str):
        self.proc, self.port = proc, port
        self.events: list[dict] = []
        self.responses: list[tuple[int, str]] = []
        self._id = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._pending: dict = {}
        self._ws = self._run(self._connect(ws_url))
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=1600, height=1000, deviceScaleFactor=1, mobile=False)

    # ------------------------------------------------------------------------------------------------ lifecycle
    @classmethod
    def launch(cls, workdir: Path, executable: str | None = None, timeout: float = 60.0) -> "Browser":
        exe = executable or find_chromium()
        if not exe:
            raise BrowserError("no chromium executable found (apt-get install -y chromium)")
        profile = Path(workdir) / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        log = open(Path(workdir) / "chromium.log", "w")
        proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={profile}", "about:blank"], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        port_file = profile / "DevToolsActivePort"
        while not port_file.is_file() or len(port_file.read_text().splitlines()) < 2:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise BrowserError(f"chromium did not start (exit {proc.poll()}); see {log.name}")
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        while True:
            try:
                pages = [t for t in requests.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
                         if t.get("type") == "page"]
                if pages:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                proc.kill()
                raise BrowserError("chromium has no page target")
            time.sleep(0.1)
        return cls(proc, port, pages[0]["webSocketDebuggerUrl"])

    def close(self) -> None:
        try:
            self._run(self._ws.close(), timeout=5)
        except Exception:
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)   # its own session: chromium and its helpers, nothing else
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------------------------------------ protocol
    def _run(self, coro, timeout: float = 120.0):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _connect(self, url):
        self._session = aiohttp.ClientSession()
        ws = await self._session.ws_connect(url, max_msg_size=0)
        self._loop.create_task(self._reader(ws))
        return ws

    async def _reader(self, ws):
        async for msg in ws:
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
                continue
            method, params = data.get("method"), data.get("params", {})
            if method == "Network.responseReceived":
                r = params["response"]
                self.responses.append((int(r["status"]), r["url"]))
            self.events.append(data)
        await self._session.close()

    async def _call(self, method, params):
        self._id += 1
        fut = self._loop.create_future()
        self._pending[self._id] = fut
        await self._ws.send_str(json.dumps({"id": self._id, "method": method, "params": params}))
        return await fut

    def call(self, method: str, timeout: float = 120.0, **params) -> dict:
        answer = self._run(self._call(method, params), timeout)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    # ------------------------------------------------------------------------------------------------ helpers
    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str, timeout: float = 120.0):
        """Value of a JS expression (awaited if it is a promise); a thrown exception raises BrowserError."""
        result = self.call("Runtime.evaluate", timeout=timeout, expression=expression, awaitPromise=True,
                           returnByValue=True)
        if "exceptionDetails" in result:
            d = result["exceptionDetails"]
            raise BrowserError(f"JS error: {d.get('exception', {}).get('description') or d.get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0, what: str = ""):
        """Poll a JS expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.evaluate(expression)
            except BrowserError as err:
                last = str(err)
            if last and not (isinstance(last, str) and last.startswith("JS error")):
                return last
            time.sleep(0.25)
        raise BrowserError(f"timed out after {timeout:.0f} s waiting for {what or expression} (last: {last!r})")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def errors(self) -> list[str]:
        """Uncaught exceptions and console.error messages, with the script URL when known."""
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e.get("method") == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')} "
                           f"({d.get('url', '')})")
            elif e.get("method") == "Runtime.consoleAPICalled" and p.get("type") == "error":
                out.append("console.error: " + " ".join(str(a.get("value", a.get("description", "")))
                                                         for a in p.get("args", [])))
        return out
