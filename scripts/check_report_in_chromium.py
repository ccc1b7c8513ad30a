#!/usr/bin/env python3
"""Open a neuronscope HTML report in headless Chromium and check that it renders offline, cleanly.

    python scripts/check_report_in_chromium.py REPORT.html [--screenshot out.png] [--json] [--width 1280]

Checks:
1. static: no src/href/srcset/poster/action/data attribute and no CSS url(...) in the file points to another
   file or the network (only `data:` URIs and `#anchors` are allowed);
2. in the browser (DevTools protocol over `--remote-debugging-pipe`, standard library only): the page loads, no
   console error, no uncaught exception, no error log entry (a Content-Security-Policy violation is one), no
   network request other than the report itself and `data:` URIs, every <img> decoded (naturalWidth > 0);
3. a full-page PNG screenshot is written (default: REPORT.png next to the report).

Exit status: 0 all checks pass; 1 a check failed (each problem printed on its own line); 2 Chromium is missing
or could not be driven. Chromium: /usr/bin/chromium (Debian: `apt-get install chromium`), or --chromium PATH.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "chromium", "chromium-browser")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--no-default-browser-check",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-pipe",
)
_URL_ATTRIBUTES = {"src", "href", "srcset", "poster", "action", "data", "formaction", "background", "xlink:href"}
_CSS_URL = re.compile(r"url\(\s*['\"]?([^'\")]*)", re.IGNORECASE)
_CSS_IMPORT = re.compile(r"@import\s+['\"]([^'\"]+)", re.IGNORECASE)


@dataclass
class CheckResult:
    report: str
    ok: bool = False
    title: str = ""
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    images: int = 0
    page_height: int = 0
    screenshot: str | None = None


class ChromiumUnavailable(RuntimeError):
    """Chromium is missing or could not be driven."""


# ------------------------------------------------------------------------------------------------ static check
class _LinkCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name.lower() in _URL_ATTRIBUTES:
                self.links.append((tag, name.lower(), value.strip()))
            if name.lower() == "style":
                self.styles.append(value)
        self._in_style = tag.lower() == "style"

    def handle_endtag(self, tag: str) -> None:
        if tag.lower() == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)


def _inside_folder(url: str) -> bool:
    """A relative path that stays in the report's folder: no scheme, no leading `/`, no `..` part."""
    path = url.split("#", 1)[0].split("?", 1)[0]
    return bool(path) and not re.match(r"^[a-z][a-z0-9+.-]*:|^/|^\\", path, re.IGNORECASE) \
        and ".." not in path.replace("\\", "/").split("/")


def static_problems(html: str) -> list[str]:
    """Every reference in the HTML that is not a `data:` URI, an in-page `#anchor`, or an `<a href>` to a file in
    the report's folder (a relative path without `..`: followed only when clicked, never loaded)."""
    collector = _LinkCollector()
    collector.feed(html)
    problems = []
    for tag, attribute, value in collector.links:
        candidates = [part.strip().split(" ")[0] for part in value.split(",")] if attribute == "srcset" else [value]
        for url in candidates:
            if url.startswith("data:") or (attribute == "href" and url.startswith("#")):
                continue
            if tag == "a" and attribute == "href" and _inside_folder(url):
                continue  # a link to a file next to the report: opened when clicked, never loaded by the page
            kind = "the network" if re.match(r"^(https?:)?//", url, re.IGNORECASE) else "another file"
            problems.append(f"<{tag} {attribute}=\"{url[:80]}\"> points to {kind}; embed it as a data: URI")
    for css in collector.styles:
        for url in _CSS_URL.findall(css) + _CSS_IMPORT.findall(css):
            if not url.strip().startswith("data:") and not url.strip().startswith("#"):
                problems.append(f"CSS url({url[:80]}) points outside the file; embed it as a data: URI")
    return problems


# ------------------------------------------------------------------------------------------------ browser
def find_chromium(explicit: str | None = None) -> str:
    for candidate in ([explicit] if explicit else CHROMIUM_CANDIDATES):
        path = shutil.which(candidate) if candidate else None
        if path:
            return path
    raise ChromiumUnavailable("chromium not found; install it (Debian: apt-get install chromium) or pass --chromium")


class _DevTools:
    """A minimal DevTools-protocol client over Chromium's --remote-debugging-pipe (fd 3 in, fd 4 out)."""

    def __init__(self, chromium: str, user_data_dir: str, log_path: str) -> None:
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()

        def wire_pipes() -> None:  # runs in the child, before exec
            os.dup2(to_browser_read, 3)
            os.dup2(from_browser_write, 4)

        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            preexec_fn=wire_pipes,
            pass_fds=(3, 4),
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply is None:
                raise ChromiumUnavailable(f"no answer from chromium to {method} within {timeout:.0f} s")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise ChromiumUnavailable(f"{method} failed: {reply['error'].get('message')}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method: str, timeout: float) -> bool:
        if any(event["method"] == method for event in self.events):
            return True
        deadline = time.monotonic() + timeout
        while True:
            event = self._read(deadline)
            if event is None:
                return False
            if "method" in event:
                self.events.append(event)
                if event["method"] == method:
                    return True

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (event := self._read(deadline)) is not None:
            if "method" in event:
                self.events.append(event)

    def _read(self, deadline: float) -> dict[str, Any] | None:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self._from_browser], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise ChromiumUnavailable("chromium closed the DevTools pipe (it exited)")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        try:
            os.write(self._to_browser, json.dumps({"id": 10**6, "method": "Browser.close"}).encode() + b"\0")
            self.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        finally:
            for descriptor in (self._to_browser, self._from_browser):
                try:
                    os.close(descriptor)
                except OSError:
                    pass
            self._log.close()


_PAGE_PROBE = """(() => {
  const images = Array.from(document.images);
  return JSON.stringify({
    title: document.title,
    height: Math.ceil(Math.max(document.documentElement.scrollHeight, document.body.scrollHeight)),
    images: images.length,
    broken: images.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt || i.src.slice(0, 40)),
    external: Array.from(document.querySelectorAll('[src],[href]'))
      .map(e => e.getAttribute('src') || e.getAttribute('href'))
      .filter(u => /^(https?:)?\\/\\//i.test(u)),
  });
})()"""


def check_report(report: str | Path, screenshot: str | Path | None = None, chromium: str | None = None,
                 width: int = 1280, timeout: float = 60.0) -> CheckResult:
    """Run the static and browser checks on `report`; write the screenshot; return what was found."""
    report = Path(report).resolve()
    result = CheckResult(str(report))
    if not report.is_file():
        result.problems.append(f"{report}: file not found")
        return result
    result.problems.extend(static_problems(report.read_text(encoding="utf-8")))
    executable = find_chromium(chromium)
    screenshot_path = Path(screenshot) if screenshot else report.with_suffix(".png")
    with tempfile.TemporaryDirectory(prefix="ns-chromium-") as profile:
        log_path = os.path.join(profile, "chromium.log")
        browser = _DevTools(executable, os.path.join(profile, "user-data"), log_path)
        try:
            target = browser.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)
            session = browser.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True},
                                   timeout=timeout)["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                browser.send(f"{domain}.enable", session=session)
            browser.send("Emulation.setDeviceMetricsOverride",
                         {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=session)
            browser.events.clear()
            navigation = browser.send("Page.navigate", {"url": report.as_uri()}, session=session)
            if navigation.get("errorText"):
                result.problems.append(f"navigation failed: {navigation['errorText']}")
            if not browser.wait_for("Page.loadEventFired", timeout):
                result.problems.append(f"the page did not finish loading within {timeout:.0f} s")
            browser.drain(0.5)  # late console messages and requests
            probe = browser.send("Runtime.evaluate", {"expression": _PAGE_PROBE, "returnByValue": True},
                                 session=session)
            page = json.loads(probe["result"]["value"])
            result.title, result.images, result.page_height = page["title"], page["images"], page["height"]
            for name in page["broken"]:
                result.problems.append(f"image '{name}' did not decode")
            for url in page["external"]:
                result.problems.append(f"the page links to {url[:80]} on the network")
            height = max(200, min(int(page["height"]), 16000))
            browser.send("Emulation.setDeviceMetricsOverride",
                         {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                         session=session)
            shot = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                                session=session, timeout=timeout)
            screenshot_path.parent.mkdir(parents=True, exist_ok=True)
            screenshot_path.write_bytes(base64.b64decode(shot["data"]))
            result.screenshot = str(screenshot_path)
            browser.drain(0.2)
        finally:
            browser.close()
    _judge_events(browser.events, report, result)
    result.ok = not result.problems
    return result


def _judge_events(events: list[dict[str, Any]], report: Path, result: CheckResult) -> None:
    own_url = report.as_uri()
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            result.requests.append(url[:120])
            if url != own_url and not url.startswith("data:"):
                result.problems.append(f"network request to {url[:120]}")
        elif method == "Runtime.consoleAPICalled":
            text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", []))
            if params.get("type") in ("error", "assert"):
                result.problems.append(f"console {params.get('type')}: {text[:200]}")
            elif params.get("type") == "warning":
                result.warnings.append(f"console warning: {text[:200]}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            result.problems.append(f"uncaught exception: {text[:200]}")
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            text = f"{entry.get('source', '')}: {entry.get('text', '')}"[:200]
            if entry.get("level") == "error":
                result.problems.append(f"log error: {text}")
            elif entry.get("level") == "warning":
                result.warnings.append(f"log warning: {text}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", help="the report.html to check")
    parser.add_argument("--screenshot", help="where to write the full-page PNG (default: REPORT.png)")
    parser.add_argument("--chromium", help="path of the chromium executable (default: /usr/bin/chromium)")
    parser.add_argument("--width", type=int, default=1280, help="viewport width in CSS pixels (default 1280)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the page (default 60)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        result = check_report(args.report, args.screenshot, args.chromium, args.width, args.timeout)
    except ChromiumUnavailable as error:
        print(f"cannot check in chromium: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(asdict(result), indent=2))
    else:
        for warning in result.warnings:
            print(f"warning: {warning}")
        for problem in result.problems:
            print(f"problem: {problem}")
        status = "OK" if result.ok else f"FAILED ({len(result.problems)} problems)"
        print(f"{status}: {result.report} — title {result.title!r}, {result.images} images, "
              f"{len(result.requests)} requests, screenshot {result.screenshot}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
