"""Debian's Chromium (/usr/bin/chromium) driven by the Python `playwright` package, with
the flags `../shared/TESTING.md` gives: headless, a fake camera and microphone granted
without a prompt, loopback allowed in peer connections. `playwright install` is never
used (it downloads a browser build of its own).

    async with chromium(tmp_path) as browser:
        page = await browser.open("alice", url)
        await browser.poll(page, "() => document.title === 'x'", what="the title")

Every page gets its own browser context (its own cookies, storage and devices, as two
people on two machines). When the `async with` ends, passing or failing, each page is
saved under the output folder: `<name>.png` (a screenshot), `<name>.html` (its DOM) and
`<name>.console.log` (its console and uncaught errors); a failure raised inside gets a
note naming that folder, and every `poll` failure names it in its message."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.process import require_program

try:
    from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright
    from playwright.async_api import Error as PlaywrightError
except ImportError as exc:  # a failure, never a skip: CI must not pass without a browser
    raise ImportError(
        "the browser tests need the playwright package: pip install -e '.[test]' "
        "(./scripts/test installs it)"
    ) from exc

# ../shared/TESTING.md's flags. Without the loopback flag and a media permission Chromium
# gathers no ICE candidate at all in a loopback-only network namespace.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
)
LAUNCH_TIMEOUT_SECONDS = 60.0
NAVIGATION_TIMEOUT_SECONDS = 20.0
ACTION_TIMEOUT_SECONDS = 10.0  # one click, fill or evaluate
SAVE_TIMEOUT_SECONDS = 10.0  # one screenshot at the end
POLL_INTERVAL_SECONDS = 0.1


def chromium_executable() -> str:
    """Debian's Chromium; fails (never skips) when it is missing."""
    return require_program("chromium", package="chromium")


@dataclass
class BrowserPage:
    """One page in a browser context of its own; `console` collects what it logged."""

    name: str
    page: Page
    console: list[str] = field(default_factory=list)

    async def evaluate(self, expression: str, arg: Any = None) -> Any:
        """Run `expression` (a JS function, awaited if async) in the page, bounded."""
        return await asyncio.wait_for(self.page.evaluate(expression, arg), ACTION_TIMEOUT_SECONDS)

    def _record(self, message: ConsoleMessage) -> None:
        self.console.append(f"{message.type}: {message.text}")

    def _record_error(self, error: Exception) -> None:
        self.console.append(f"pageerror: {error}")


class Chromium:
    """A running Chromium; `open` adds pages, `poll` waits on them (bounded)."""

    def __init__(self, browser: Browser, output_dir: Path) -> None:
        self.browser = browser
        self.output_dir = output_dir
        self.pages: list[BrowserPage] = []

    async def open(self, name: str, url: str) -> BrowserPage:
        """A new context with one page named `name` (its saved files' name) at `url`."""
        assert name not in {p.name for p in self.pages}, f"two pages named {name}"
        context = await self.browser.new_context(viewport={"width": 1000, "height": 800})
        context.set_default_timeout(ACTION_TIMEOUT_SECONDS * 1000)
        page = BrowserPage(name, await context.new_page())
        page.page.on("console", page._record)
        page.page.on("pageerror", page._record_error)
        self.pages.append(page)
        await page.page.goto(url, timeout=NAVIGATION_TIMEOUT_SECONDS * 1000)
        return page

    async def poll(
        self,
        page: BrowserPage,
        expression: str,
        arg: Any = None,
        *,
        what: str,
        timeout: float,
        describe: str | None = None,
    ) -> Any:
        """Evaluate `expression` (a JS function; may be async) until it returns something
        truthy, and return that; fail after `timeout` seconds saying `what` was awaited,
        with the last value, `describe`'s answer (a JS function summing up the page) and
        where the screenshots go."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            last = await page.evaluate(expression, arg)
            if last:
                return last
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(POLL_INTERVAL_SECONDS)
        state: Any = None
        if describe is not None:
            try:
                state = await page.evaluate(describe)
            except (PlaywrightError, TimeoutError) as exc:  # still fail on what was awaited
                state = f"not readable: {exc!r}"
        raise AssertionError(
            f"{page.name}: no {what} within {timeout:.0f} s (last value {last!r}; page state "
            f"{json.dumps(state)}); screenshots, DOM and console logs: {self.output_dir}"
        )

    async def save_pages(self) -> list[str]:
        """Save every page's screenshot, DOM and console log; the problems met, if any."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        problems = []
        for page in self.pages:
            base = self.output_dir / page.name
            base.with_suffix(".console.log").write_text("".join(f"{m}\n" for m in page.console))
            try:
                async with asyncio.timeout(SAVE_TIMEOUT_SECONDS):
                    await page.page.screenshot(path=base.with_suffix(".png"), full_page=True)
                    base.with_suffix(".html").write_text(await page.page.content())
            except (PlaywrightError, TimeoutError) as exc:
                problems.append(f"{page.name}: not saved: {exc!r}")
        return problems


@contextlib.asynccontextmanager
async def chromium(output_dir: Path) -> AsyncIterator[Chromium]:
    """Launch Chromium; on the way out save every page (see the module docstring)."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_executable(),
            args=list(CHROMIUM_FLAGS),
            headless=True,
            timeout=LAUNCH_TIMEOUT_SECONDS * 1000,
        )
        session = Chromium(browser, output_dir)
        try:
            yield session
        except BaseException as exc:
            exc.add_note(f"screenshots, DOM and console logs: {output_dir}")
            problems = await session.save_pages()
            for problem in problems:
                exc.add_note(problem)
            raise
        else:
            problems = await session.save_pages()
            assert not problems, "\n".join(problems)
        finally:
            await asyncio.wait_for(browser.close(), SAVE_TIMEOUT_SECONDS)
