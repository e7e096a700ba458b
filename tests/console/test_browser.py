"""The web console end to end in a real headless Chromium (the system's, driven by Playwright) against
a real stack (`cosmos up`'s components, the console among them): sign-in required, an encode's
progress rising in the page (server-sent events from WatchEncode), its DAG rendered, a workflow
cancelled from the page, the cancel button hidden from a viewer. Skips, saying why, without chromium.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import console_harness
import pytest

from cosmos.stack.embedded import EmbeddedStack

pytestmark = pytest.mark.timeout(420)

CHROMIUM, WHY_NOT = console_harness.chromium()
if not CHROMIUM:
    pytest.skip(WHY_NOT, allow_module_level=True)
playwright_api = pytest.importorskip("playwright.async_api", reason="playwright is a dev dependency")
FINAL = {"succeeded", "failed", "cancelled"}


async def sign_in(page: object, base: str, token: str, path: str = "workflows") -> None:
    from playwright.async_api import Page

    assert isinstance(page, Page)
    await page.goto(f"{base}{path}")
    assert "/signin" in page.url, page.url  # no session: the sign-in form, remembering where to go
    await page.fill("#token", token)
    await page.click("form.signin button[type=submit]")
    await page.wait_for_url(f"{base}{path}*")


@pytest.mark.slow
async def test_the_console_in_chromium(tmp_path: Path) -> None:
    cfg = console_harness.stack_config(tmp_path / "data")
    clip = await console_harness.make_clip(cfg)
    async with EmbeddedStack(cfg) as stack, playwright_api.async_playwright() as pw:
        base = cfg.console_url
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=console_harness.browser_args(stack))
        admin = await browser.new_context(viewport={"width": 1280, "height": 720})
        page = await admin.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

        # Sign-in is required; a wrong token is refused with the reason.
        await page.goto(f"{base}workflows")
        assert "/signin" in page.url
        await page.fill("#token", "not-a-token")
        await page.click("form.signin button[type=submit]")
        body = await page.content()
        assert "Not signed in" in body, body
        await sign_in(page, base, console_harness.token(stack, "admin"))
        assert "admin" in await page.inner_text("header")
        # Keyboard: the first Tab reaches the skip link, which moves the focus to the content.
        await page.keyboard.press("Tab")
        assert await page.evaluate("() => document.activeElement.textContent") == "Skip to content"
        await page.keyboard.press("Enter")
        assert await page.evaluate("() => document.activeElement.id") == "main"

        # An encode, started from the page's form: its progress rises in the page, pushed by the server.
        await page.goto(f"{base}encodes")
        await page.click("text=Start an encode")
        await page.fill("input[name=source]", "file:///nowhere/missing.mp4")
        await page.click("form[action='/encodes'] button[type=submit]")
        assert "Not started" in await page.inner_text("main")  # the service's reason, shown
        await page.click("text=Start an encode")
        await page.fill("input[name=source]", clip.as_uri())
        await page.fill("input[name=output]", (clip.parent / "console-out").as_uri())
        await page.fill("input[name=profiles]", "360p,540p")
        await page.select_option("select[name=quality]", "off")
        await page.click("form[action='/encodes'] button[type=submit]")
        await page.wait_for_url(f"{base}encodes/enc-*")
        encode_id = page.url.rsplit("/", 1)[-1]
        seen: list[int] = []
        deadline = time.monotonic() + 300
        state = ""
        while time.monotonic() < deadline:
            # The state first: once it is final, the percent read after it is the final one too (read
            # the other way round, a loaded run saw 98 %, then the page turned to 100 % and succeeded).
            state = await page.inner_text("[data-encode-state]")
            text = (await page.inner_text('[data-percent="encode"]')).rstrip("%")
            if not seen or int(text) != seen[-1]:
                seen.append(int(text))
            if state.strip() in FINAL:
                break
            await asyncio.sleep(0.1)
        assert state.strip() == "succeeded", (state, seen)
        assert seen == sorted(seen) and seen[-1] == 100 and any(0 < p < 100 for p in seen), seen
        await page.reload()
        assert await page.locator("table tbody tr").count() == 2  # two renditions
        # The published HLS, served by the console to those who may read the encode, played by hls.js.
        media = f"{base}encodes/{encode_id}/media/"
        fetch = "u => fetch(u).then(async r => [r.status, await r.text()])"
        status, text = await page.evaluate(fetch, f"{media}master.m3u8")
        assert status == 200 and text.startswith("#EXTM3U"), (status, text)
        status, _ = await page.evaluate(fetch, f"{media}..%2F..%2F..%2Fpki%2Fca.pem")
        assert status == 404
        video = page.locator("video[data-hls]")
        await video.evaluate("v => { v.muted = true; return v.play(); }")
        deadline = time.monotonic() + 30
        while await video.evaluate("v => v.currentTime") < 0.5:
            assert time.monotonic() < deadline, await video.evaluate(
                "v => String(v.error && v.error.message)"
            )
            await asyncio.sleep(0.2)

        # Its workflow: the DAG of the ladder, every step done.
        await page.click("dl.facts a[href^='/workflows/']")  # the encode's workflow
        for step in ("probe", "split", "encode", "package", "publish"):
            node = page.locator(f'svg.dag g[data-step="{step}"]')
            assert await node.count() == 1, step
            assert "state-completed" in (await node.get_attribute("class") or ""), step
        assert await page.locator("svg.dag line.edge").count() > 5
        assert await page.locator("svg.gantt rect.bar").count() > 5

        # Its jobs: each followed live to its end (state and log from WatchJob).
        await page.goto(f"{base}jobs")
        await page.locator("table tbody tr a").first.click()
        await console_harness.wait_text(page, "[data-job-state]", lambda t: t == "succeeded", 30)

        # A workflow cancelled from the page; the page follows its state live.
        await console_harness.start_hanging_workflow(stack, "console-cancel-me")
        await console_harness.start_hanging_workflow(stack, "console-keep-running")
        # The list's filters (applied by Plato): running, of this tenant, created in the last 15 minutes.
        await page.goto(f"{base}workflows")
        await page.select_option("select[name=state]", "running")
        await page.fill("input[name=tenant]", "elsewhere")
        await page.select_option("select[name=since]", "15m")
        await page.click("button:has-text('Filter')")
        await console_harness.wait_text(page, "main", lambda t: "No workflows match." in t, 10)
        await page.fill("input[name=tenant]", "default")
        await page.click("button:has-text('Filter')")
        await console_harness.wait_text(
            page, "main", lambda t: "console-cancel-me" in t and "console-keep-running" in t, 10
        )
        assert await page.locator("table tbody tr").count() == 2  # the finished encode is filtered out
        await page.click("text=console-cancel-me")
        await page.click("button:has-text('Cancel workflow')")
        assert "Cancellation requested" in await page.inner_text("main")
        await console_harness.wait_text(page, "[data-workflow-state]", lambda t: t == "cancelled", 30)

        # A viewer: signed in with the same form, sees the running workflow but no cancel button,
        # and no cordon/drain on the pool page.
        viewer = await browser.new_context(viewport={"width": 390, "height": 844})
        vpage = await viewer.new_page()
        await sign_in(vpage, base, console_harness.token(stack, "viewer"), "workflows/console-keep-running")
        assert "running" in await vpage.inner_text("[data-workflow-state]")
        assert await vpage.locator("button:has-text('Cancel workflow')").count() == 0
        # ...and a hand-made POST (with the session's CSRF token) is refused by Plato, not the console.
        forged = """async () => {
            const body = new URLSearchParams({csrf: document.querySelector("input[name=csrf]").value});
            const r = await fetch("/workflows/console-keep-running/cancel", {method: "POST", body});
            return [r.status, await r.text()];
        }"""
        status, text = await vpage.evaluate(forged)
        assert status == 403 and "PERMISSION_DENIED" in text and "WORKFLOWS_WRITE" in text, (status, text)
        await vpage.reload()
        assert "running" in await vpage.inner_text("[data-workflow-state]")
        await vpage.goto(f"{base}pool")
        assert await vpage.locator("text=" + cfg.agent_id).count() >= 1
        assert await vpage.locator("button:has-text('Drain')").count() == 0
        await page.goto(f"{base}pool")
        assert await page.locator("button:has-text('Drain')").count() == 1  # the admin has them
        await page.click("button:has-text('Cordon')")
        assert "cordoned" in await page.inner_text("table tbody")
        await page.click("button:has-text('Uncordon')")
        assert "ready" in await page.inner_text("table tbody")

        # The pages of the menu all render for the viewer.
        for path in ("jobs", "definitions", "definitions/encode-ladder", "encodes"):
            reply = await vpage.goto(f"{base}{path}")
            assert reply is not None and reply.status == 200, path
        assert await vpage.locator("text=Start an encode").count() == 0  # the last: encodes
        # A tab left open on a running workflow (an event stream) holds no stop up: SIGTERM ends the
        # console at once, cleanly.
        await vpage.goto(f"{base}workflows/console-keep-running")
        await asyncio.sleep(1.0)
        (console,) = [c for c in stack.children if c.name == "console"]
        began = time.monotonic()
        assert await console.stop(15.0) == 0
        assert time.monotonic() - began < 6, time.monotonic() - began
        await browser.close()
        assert not [e for e in errors if "Content Security Policy" in e], errors
