"""The HTML report in a real browser (headless Chromium, 1400x900): every image loads with a size, no
console or load error, the headline is on the first screen, and the page is no wider than the window.
``.ci/run`` installs Debian's ``chromium`` when it is missing; elsewhere the test skips without one."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from reports.build import build_report
from tests.test_reports_build import fake_rows

WIDTH, HEIGHT = 1400, 900
PROBE_HEAD = """<script>
window.__problems = [];
window.addEventListener("error", e => window.__problems.push("error: " + (e.message || (e.target && e.target.src)
  || "a resource failed to load")), true);
const __error = console.error;
console.error = (...args) => { window.__problems.push("console.error: " + args.join(" ")); __error(...args); };
</script>"""
PROBE_END = """<script>
window.addEventListener("load", () => {
  const h2 = document.querySelector("h2");
  const out = {images: [...document.images].map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]),
               problems: window.__problems, pageWidth: document.documentElement.scrollWidth,
               windowWidth: window.innerWidth, windowHeight: window.innerHeight,
               firstHeading: h2 ? h2.textContent : null, firstHeadingTop: h2 ? h2.getBoundingClientRect().top : null};
  const pre = document.createElement("pre");
  pre.id = "encbench-probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def browser() -> str:
    found = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if not found:
        pytest.skip("no Chromium here (.ci/run installs Debian's chromium package)")
    return found


def probe(page) -> dict:
    """Open ``page`` (with the probe scripts added) in headless Chromium; what the probe saw."""
    html = page.read_text()
    probed = page.with_name("probed.html")
    probed.write_text(html.replace("<head>", "<head>\n" + PROBE_HEAD, 1).replace("</body>", PROBE_END + "\n</body>"))
    done = subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--window-size={WIDTH},{HEIGHT}", "--virtual-time-budget=10000", "--dump-dom",
                           probed.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="encbench-probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the page did not finish loading: {done.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                      .replace("&gt;", ">"))


def test_the_report_reads_in_a_real_browser(tmp_path):
    rows = fake_rows()
    rows["latency_ms_pixel_decoder_alone_p50"] = rows["latency_ms_pixel_decoder_p50"]
    rows["latency_ms_pixel_decoder_alone_ci95"] = 0.3
    build_report(rows, tmp_path)
    seen = probe(tmp_path / "index.html")
    assert seen["problems"] == []
    assert seen["images"] and all(done and w > 0 and h > 0 for _, done, w, h in seen["images"]), seen["images"]
    assert seen["firstHeading"].startswith("How much of the MAC saving became speed")
    assert 0 <= seen["firstHeadingTop"] < seen["windowHeight"]
    assert seen["pageWidth"] <= seen["windowWidth"] == WIDTH


def test_the_probe_sees_a_broken_image_and_a_page_too_wide(tmp_path):
    page = tmp_path / "index.html"
    page.write_text('<!doctype html><html><head></head><body><h2>x</h2><img alt="gone" src="missing.png">'
                    '<div style="width: 3000px">wide</div></body></html>')
    seen = probe(page)
    assert seen["images"] == [["gone", True, 0, 0]] and seen["problems"]
    assert seen["pageWidth"] > seen["windowWidth"]
