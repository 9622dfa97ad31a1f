"""A headless Chromium driven over the DevTools protocol (CDP) with aiohttp's websocket client (a Ray
dependency): open a page, collect its console errors, evaluate JavaScript, take a screenshot. No browser
automation package, only a Chromium binary from the system's packages.

    python tests/browser.py out/sample/report.html docs/report.png   # the screenshot in the README
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
LISTENING = re.compile(rb"DevTools listening on (ws://\S+)")


def find_chromium() -> str | None:
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


class BrowserError(RuntimeError):
    pass


@dataclass
class Page:
    """What a page did while it loaded and was looked at."""

    errors: list[str] = field(default_factory=list)  # console errors, uncaught exceptions, error log entries
    value: Any = None  # what the evaluated expression returned
    screenshot: bytes = b""  # PNG
    pixels: dict[str, Any] = field(default_factory=dict)  # the screenshot decoded: width, height, colours


def open_page(
    url: str, expression: str = "null", width: int = 1200, height: int = 900, full_page: bool = False, timeout=60.0
) -> Page:
    """Load ``url`` in a fresh headless Chromium, evaluate ``expression`` once the load event fired, and take a
    screenshot (the viewport, or the whole page); the browser is killed whatever happens."""
    binary = find_chromium()
    if binary is None:
        raise BrowserError(f"none of {', '.join(BROWSERS)} is on PATH")
    log: list[bytes] = []
    try:
        return asyncio.run(
            asyncio.wait_for(_open_page(binary, log, url, expression, width, height, full_page), timeout)
        )
    except (TimeoutError, BrowserError, aiohttp.ClientError) as error:
        tail = b"".join(log)[-2000:].decode(errors="replace")
        raise BrowserError(f"{url}: {error!r}; Chromium's stderr ends with:\n{tail}") from error


async def _open_page(
    binary: str, log: list[bytes], url: str, expression: str, width: int, height: int, full_page: bool
) -> Page:
    with tempfile.TemporaryDirectory(prefix="shardflow-chromium-") as profile:
        process = await asyncio.create_subprocess_exec(
            binary,
            "--headless=new",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "--no-sandbox",  # Chromium's sandbox refuses to run as root, as in containers
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
            "--no-default-browser-check",
            "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group: killed with its renderers
        )
        try:
            endpoint = await _devtools_endpoint(process, log)
            drain = asyncio.create_task(_keep(process.stderr, log))  # a full pipe would stall the browser
            async with aiohttp.ClientSession() as http, http.ws_connect(endpoint, max_msg_size=0) as socket:
                devtools = Devtools(socket)
                page = await _look(devtools, url, expression, width, height, full_page)
                with contextlib.suppress(BrowserError):  # it may hang up before it answers
                    await devtools.send("Browser.close")
            with contextlib.suppress(TimeoutError):  # closed by itself, it reaps its own children
                await asyncio.wait_for(process.wait(), 10)
            drain.cancel()
            return page
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


async def _devtools_endpoint(process: asyncio.subprocess.Process, log: list[bytes]) -> str:
    while line := await process.stderr.readline():
        log.append(line)
        if found := LISTENING.search(line):
            return found.group(1).decode()
    raise BrowserError(f"Chromium exited ({await process.wait()}) before it listened for DevTools")


async def _keep(stream: asyncio.StreamReader, log: list[bytes]) -> None:
    while line := await stream.readline():
        log.append(line)


class Devtools:
    """One websocket to the browser; commands to a page go through its flat session (``sessionId``)."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.socket, self.ids = socket, itertools.count(1)
        self.replies: dict[int, asyncio.Future] = {}
        self.listeners: list[Any] = []
        self.reader = asyncio.create_task(self._read())

    async def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        number = next(self.ids)
        reply = self.replies[number] = asyncio.get_running_loop().create_future()
        message = {"id": number, "method": method, "params": params} | ({"sessionId": session} if session else {})
        await self.socket.send_str(json.dumps(message))
        return await reply

    async def _read(self) -> None:
        async for message in self.socket:
            data = json.loads(message.data)
            if "id" not in data:
                for listener in self.listeners:
                    listener(data)
            elif "error" in data:
                self.replies.pop(data["id"]).set_exception(BrowserError(f"{data['error']}"))
            else:
                self.replies.pop(data["id"]).set_result(data.get("result", {}))
        for reply in self.replies.values():
            reply.set_exception(BrowserError("the DevTools connection closed"))


async def _look(devtools: Devtools, url: str, expression: str, width: int, height: int, full_page: bool) -> Page:
    page, loads, loaded = Page(), set(), asyncio.Event()
    target = await devtools.send("Target.createTarget", url="about:blank")
    session = (await devtools.send("Target.attachToTarget", targetId=target["targetId"], flatten=True))["sessionId"]

    def listen(event: dict[str, Any]) -> None:
        if event.get("sessionId") != session:
            return
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            page.errors.append(
                "console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            )
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            page.errors.append("exception: " + details.get("exception", {}).get("description", details["text"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            page.errors.append(f"log: {params['entry']['text']} ({params['entry'].get('url', '')})")
        elif method == "Page.lifecycleEvent" and params["name"] == "load":
            loads.add(params["loaderId"])  # kept: it may come before navigate's reply is read
            loaded.set()

    devtools.listeners.append(listen)
    for domain in ("Runtime", "Log", "Page"):
        await devtools.send(f"{domain}.enable", session)
    await devtools.send("Page.setLifecycleEventsEnabled", session, enabled=True)
    await devtools.send(
        "Emulation.setDeviceMetricsOverride", session, width=width, height=height, deviceScaleFactor=1, mobile=False
    )
    navigation = await devtools.send("Page.navigate", session, url=url)
    if navigation.get("errorText"):
        raise BrowserError(f"{url}: {navigation['errorText']}")
    while navigation["loaderId"] not in loads:  # this navigation's load, not about:blank's
        loaded.clear()
        await loaded.wait()
    page.value = await _evaluate(devtools, session, expression)
    clip = None
    if full_page:
        size = (await devtools.send("Page.getLayoutMetrics", session))["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": width, "height": size["height"], "scale": 1}
    shot = await devtools.send(
        "Page.captureScreenshot",
        session,
        format="png",
        captureBeyondViewport=full_page,
        **({"clip": clip} if clip else {}),
    )
    page.screenshot = base64.b64decode(shot["data"])
    page.pixels = await _evaluate(devtools, session, DECODE_PNG % json.dumps(shot["data"]))
    return page


async def _evaluate(devtools: Devtools, session: str, expression: str) -> Any:
    result = await devtools.send(
        "Runtime.evaluate", session, expression=expression, returnByValue=True, awaitPromise=True
    )
    if "exceptionDetails" in result:
        raise BrowserError(f"evaluating {expression[:80]!r}: {result['exceptionDetails']}")
    return result["result"].get("value")


# The screenshot decoded by the browser's own PNG decoder: its size, how many colours it has and the pixels of
# each of the 20 most frequent ones.
DECODE_PNG = """(async () => {
  const image = new Image();
  image.src = "data:image/png;base64," + %s;
  await image.decode();
  const canvas = new OffscreenCanvas(image.width, image.height), context = canvas.getContext("2d");
  context.drawImage(image, 0, 0);
  const data = context.getImageData(0, 0, image.width, image.height).data, pixels = new Map();
  for (let i = 0; i < data.length; i += 4) {
    const colour = "#" + (data[i] << 16 | data[i + 1] << 8 | data[i + 2]).toString(16).padStart(6, "0");
    pixels.set(colour, (pixels.get(colour) || 0) + 1);
  }
  const frequent = [...pixels].sort((a, b) => b[1] - a[1]).slice(0, 20);
  return {width: image.width, height: image.height, colours: pixels.size, frequent: Object.fromEntries(frequent)};
})()"""


if __name__ == "__main__":
    report, png = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    shot = open_page(report.as_uri(), full_page=True)
    png.write_bytes(shot.screenshot)
    print(
        f"{png}: {shot.pixels['width']}x{shot.pixels['height']}, {len(shot.screenshot):,} bytes; errors: {shot.errors}"
    )
