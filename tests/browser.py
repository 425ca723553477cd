"""A tiny headless Chromium driven through the Chrome DevTools Protocol (websocket-client), for the page tests.

    with Browser(tmp_path) as b:
        page = b.new_page()
        page.navigate("http://127.0.0.1:8000/")
        page.wait_for("document.querySelectorAll('#grid img').length == 4")
        page.screenshot("shot.png")
"""
import base64
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import websocket


class CDPError(RuntimeError):
    pass


def _wait(check, timeout: float, what: str, every: float = 0.05):
    """Poll ``check()`` until it returns something truthy (returned), or raise TimeoutError after ``timeout`` s."""
    end = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


class Page:
    """One page target: ``send`` a CDP command and get its result; helpers for the usual steps."""

    def __init__(self, ws_url: str, timeout: float = 30.0):
        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self.timeout, self.next_id = timeout, 0

    def send(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:                                    # skip events until our answer comes
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise CDPError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def eval(self, expression: str):
        """The value of a JavaScript expression (promises awaited); a thrown exception raises CDPError."""
        r = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise CDPError(f"{expression!r} threw: {d.get('exception', {}).get('description', d.get('text'))}")
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float = None):
        """Poll a JavaScript expression until it is truthy; its value."""
        return _wait(lambda: self.eval(expression), timeout or self.timeout, expression, every=0.1)

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")

    def set_files(self, selector: str, paths) -> None:
        """Choose files in the ``<input type=file>`` at ``selector``, as a user would (input and change fire)."""
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        if not node:
            raise CDPError(f"no element matches {selector!r}")
        self.send("DOM.setFileInputFiles", nodeId=node, files=[str(Path(p).resolve()) for p in paths])

    def screenshot(self, path) -> bytes:
        data = base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
        return data

    def close(self) -> None:
        self.ws.close()


class Browser:
    """Headless Chromium with its own user-data-dir in ``tmp``, killed on ``close`` (or leaving a ``with``)."""

    def __init__(self, tmp, width: int = 1200, height: int = 900, exe: str = None, timeout: float = 30.0):
        exe = exe or shutil.which("chromium") or shutil.which("chromium-browser")
        if exe is None:
            raise FileNotFoundError("no chromium executable on PATH")
        self.tmp = Path(tmp)
        (self.tmp / "profile").mkdir(parents=True, exist_ok=True)
        self.log = self.tmp / "chromium.log"
        self.timeout, self.pages, self.size = timeout, [], (width, height)
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
                 f"--user-data-dir={self.tmp / 'profile'}", f"--window-size={width},{height}", "--no-first-run",
                 "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars", "about:blank"],
                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        try:
            self.ws_url = _wait(self._listening, timeout, "chromium's 'DevTools listening on' line")
            self.port = int(self.ws_url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        except BaseException:
            self.close()
            raise

    def _listening(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"chromium exited ({self.proc.returncode}): {self.log.read_text(errors='replace')}")
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("DevTools listening on "):
                return line.split(" on ", 1)[1].strip()
        return None

    def new_page(self) -> Page:
        """A fresh page target (Target.createTarget on the browser connection), connected."""
        browser = websocket.create_connection(self.ws_url, timeout=self.timeout, suppress_origin=True)
        try:
            browser.send(json.dumps({"id": 1, "method": "Target.createTarget", "params": {"url": "about:blank"}}))
            while True:
                msg = json.loads(browser.recv())
                if msg.get("id") == 1:
                    break
        finally:
            browser.close()
        if "error" in msg:
            raise CDPError(f"Target.createTarget: {msg['error']}")
        page = Page(f"ws://127.0.0.1:{self.port}/devtools/page/{msg['result']['targetId']}", self.timeout)
        self.pages.append(page)
        page.send("Emulation.setDeviceMetricsOverride", width=self.size[0], height=self.size[1], deviceScaleFactor=1,
                  mobile=False)                        # the viewport is exactly width x height
        return page

    def close(self) -> None:
        for p in self.pages:
            try:
                p.close()
            except Exception:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)     # chromium and its helpers: the group it leads
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
