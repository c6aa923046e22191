"""Photograph a picture of the asset metadata in the Dagster UI (docs/ui-picture.png).

A picture opens from its "Show Markdown" link, so this needs a click: Playwright drives
Debian's Chromium (`pip install playwright`; no browser download). Called by
make_screenshots.sh while `dagster dev` runs on $PORT.
"""

import os
import shutil

from playwright.sync_api import sync_playwright

with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1500, "height": 950})
    page.goto(f"http://127.0.0.1:{os.environ['PORT']}/assets/segment_analytics?view=events")
    page.wait_for_timeout(8000)
    row = page.locator("tr", has_text="segment_sizes").first
    row.get_by_text("Show Markdown").click()
    page.wait_for_timeout(3000)
    page.screenshot(path="docs/ui-picture.png")
    browser.close()
