"""Screenshots of every console page for docs/console.md, taken from a real stack in headless Chromium.

    .venv/bin/python scripts/console_screenshots.py [--out docs/console]

Starts the embedded stack with the console in a temporary directory, runs an encode (sampled VMAF and
PSNR) and a workflow that waits for a worker nobody runs, and saves one PNG per page at 1280x720
(and two at phone width). Needs the system's chromium (`make install` puts it there on Debian).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))

import console_harness  # noqa: E402  (the test support dir is put on the path above)
from playwright.async_api import Page, async_playwright  # noqa: E402

from cosmos.optimus.v1 import encode_pb2  # noqa: E402
from cosmos.stack.embedded import EmbeddedStack  # noqa: E402


async def shoot(page: Page, out: Path, name: str, *, full: bool = False) -> None:
    await page.screenshot(path=str(out / f"{name}.png"), full_page=full)
    print(f"{out / name}.png")


async def run(out: Path) -> int:
    chromium, why = console_harness.chromium()
    if not chromium:
        print(f"console_screenshots: {why}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="cosmos-shots-") as tmp:
        cfg = console_harness.stack_config(Path(tmp) / "data")
        cfg.agent_gpus = "2xA100:80G"  # declared GPUs, so the pool page shows some
        clip = await console_harness.make_clip(cfg, seconds=10.0, size="960x540")
        async with EmbeddedStack(cfg) as stack, async_playwright() as pw:
            base = cfg.console_url
            browser = await pw.chromium.launch(
                executable_path=chromium, args=console_harness.browser_args(stack)
            )
            desk = await browser.new_context(viewport={"width": 1280, "height": 720})
            page = await desk.new_page()
            await page.goto(f"{base}workflows")
            await shoot(page, out, "signin")
            await page.fill("#token", console_harness.token(stack, "admin", "ada"))
            await page.click("form.signin button[type=submit]")
            await page.wait_for_url(f"{base}workflows*")

            encode = await console_harness.submit_encode(stack, clip, quality=encode_pb2.QUALITY_MODE_SAMPLED)
            await console_harness.start_hanging_workflow(stack, "waiting-for-a-worker")
            await page.goto(f"{base}encodes/{encode.encode_id}")
            await console_harness.wait_text(
                page, '[data-percent="encode"]', lambda t: int(t.rstrip("%")) >= 30
            )
            await shoot(page, out, "encode-progress")
            await console_harness.wait_text(
                page, "[data-encode-state]", lambda t: t in ("succeeded", "failed", "cancelled")
            )
            await page.reload()
            await shoot(page, out, "encode", full=True)
            await page.goto(f"{base}workflows/{encode.workflow_id}")
            await shoot(page, out, "workflow", full=True)
            await page.goto(f"{base}workflows")
            await shoot(page, out, "workflows")
            await page.goto(f"{base}encodes")
            await shoot(page, out, "encodes")
            await page.goto(f"{base}jobs")
            await shoot(page, out, "jobs")
            await page.locator("table tbody tr a").first.click()
            await shoot(page, out, "job")
            await page.goto(f"{base}pool")
            await shoot(page, out, "pool")
            await page.goto(f"{base}definitions")
            await shoot(page, out, "definitions")
            await page.goto(f"{base}definitions/encode-ladder")
            await shoot(page, out, "definition")

            phone = await browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=1)
            small = await phone.new_page()
            await small.goto(f"{base}workflows/waiting-for-a-worker")
            await small.fill("#token", console_harness.token(stack, "viewer", "val"))
            await small.click("form.signin button[type=submit]")
            await small.wait_for_url(f"{base}workflows/waiting-for-a-worker*")
            await shoot(small, out, "phone-workflow-viewer", full=True)
            await small.goto(f"{base}encodes/{encode.encode_id}")
            await shoot(small, out, "phone-encode", full=True)
            await browser.close()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", default=str(ROOT / "docs" / "console"), help="where the PNGs go")
    out = Path(p.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    return asyncio.run(run(out))


if __name__ == "__main__":
    sys.exit(main())
