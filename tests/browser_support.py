"""The real ComfyUI web frontend in headless Chromium (playwright + the system browser).

Used by tests/test_comfyui_browser.py and by tests/workflow_specs.py (which measures node sizes
and renders the thumbnails).  Chromium is found through ``CHROMIUM`` (default /usr/bin/chromium);
without it, or without playwright, :func:`browser_or_skip` skips the calling module loudly.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from comfy_support import skip_loudly

VIEWPORT = {"width": 1600, "height": 1000}
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PACK_WORDS = ("NoiseAwareness", "comfy-nag", "comfy_nag", "noise_awareness")


def chromium_path() -> str | None:
    path = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    return path if Path(path).exists() else shutil.which("chromium")


def browser_or_skip() -> str:
    why = None
    exe = chromium_path()
    if exe is None:
        why = "Chromium not found (install Debian's chromium, or set CHROMIUM=/path/to/chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            why = f"playwright is not installed in {sys.executable} (pip install playwright; its own browser is not needed)"
    if why:
        skip_loudly(f"SKIPPING ComfyUI browser tests: {why}")
    return exe


# Graph facts as the frontend holds them: nodes with their bounding boxes (title bar included) and widgets.
SUMMARY_JS = """() => {
  const g = window.app.graph;
  const ctx = document.createElement('canvas').getContext('2d');
  ctx.font = window.app.canvas.title_text_font;
  for (const n of g._nodes) n.title_width_needed = ctx.measureText(n.title).width + 2 * window.LiteGraph.NODE_TITLE_HEIGHT;
  const links = g.links instanceof Map ? g.links.size : Object.values(g.links || {}).filter(Boolean).length;
  const nodes = g._nodes.map(n => {
    const b = n.getBounding ? Array.from(n.getBounding()) : [n.pos[0], n.pos[1] - 30, n.size[0], n.size[1] + 30];
    return {id: n.id, type: n.type, title: n.title, bounding: b, has_errors: !!n.has_errors, width: n.size[0],
            title_width: n.title_width_needed,
            widgets: (n.widgets || []).map(w => ({name: w.name, type: w.type, value: w.value,
                                                  options: w.options ? {values: Array.isArray(w.options.values) ? w.options.values : null,
                                                                        min: w.options.min ?? null, max: w.options.max ?? null} : null}))};
  });
  return {nodes, links, low_quality: !!window.app.canvas.low_quality, scale: window.app.canvas.ds.scale};
}"""

DROP_JS = """([name, text]) => {
  const dt = new DataTransfer();
  dt.items.add(new File([text], name, {type: 'application/json'}));
  const target = document.querySelector('#graph-canvas') || document;
  target.dispatchEvent(new DragEvent('dragover', {dataTransfer: dt, bubbles: true, cancelable: true}));
  target.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
}"""


class Frontend:
    """One Chromium page on a running ComfyUI server; collects console errors."""

    def __init__(self, url: str, executable: str):
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(executable_path=executable, args=FLAGS, headless=True)
        self.page = self.browser.new_page(viewport=VIEWPORT)
        self.errors: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.url = url
        self.page.goto(url, wait_until="domcontentloaded", timeout=120_000)
        self.page.wait_for_function("() => window.app && window.app.graph && window.app.canvas", timeout=120_000)
        self.page.wait_for_timeout(1500)
        self.close_dialogs()
        # the minimap and the render-statistics overlay would cover part of the screenshots
        self.page.evaluate("() => window.app.extensionManager.setting.set('Comfy.Minimap.Visible', false)")
        self.page.evaluate("() => { window.app.canvas.show_info = false; }")

    def close_dialogs(self):
        self.page.keyboard.press("Escape")
        self.page.wait_for_timeout(200)

    def dialogs_text(self) -> str:
        return " | ".join(self.page.locator(".p-dialog").all_inner_texts())

    def clear(self):
        self.page.evaluate("() => window.app.graph.clear()")

    def drop(self, name: str, text: str):
        self.page.evaluate(DROP_JS, [name, text])
        self.page.wait_for_timeout(1500)

    def load(self, graph: dict):
        self.page.evaluate("(g) => window.app.loadGraphData(g)", graph)
        self.page.wait_for_timeout(800)

    def fit(self):
        """Fit the graph into the window as the canvas toolbar's 'fit view' does, and redraw."""
        self.page.evaluate("() => window.app.extensionManager.command.execute('Comfy.Canvas.FitView')")
        self.page.wait_for_timeout(800)
        self.page.evaluate("() => window.app.canvas.setDirty(true, true)")
        self.page.wait_for_timeout(400)

    def summary(self) -> dict:
        """Nodes (bounding boxes with the title bar, widgets, the width their title needs), link count, zoom."""
        return self.page.evaluate(SUMMARY_JS)

    def pack_errors(self) -> list[str]:
        return [e for e in self.errors if any(w.lower() in e.lower() for w in PACK_WORDS)]

    def screenshot(self, path: Path, quality: int | None = None, graph_only: bool = False):
        """PNG (or JPEG with ``quality``) of the canvas; ``graph_only``: cropped to the nodes plus a margin."""
        path.parent.mkdir(parents=True, exist_ok=True)
        kw = {"type": "jpeg", "quality": quality} if quality else {}
        if graph_only:
            kw["clip"] = self.page.evaluate("""() => {
              const c = window.app.canvas, r = c.canvas.getBoundingClientRect(), s = c.ds.scale, o = c.ds.offset;
              const b = window.app.graph._nodes.map(n => Array.from(n.getBounding()));
              const x0 = Math.min(...b.map(v => v[0])), y0 = Math.min(...b.map(v => v[1]));
              const x1 = Math.max(...b.map(v => v[0] + v[2])), y1 = Math.max(...b.map(v => v[1] + v[3]));
              const m = 16, left = Math.max(r.left, r.left + (x0 + o[0]) * s - m), top = Math.max(r.top, r.top + (y0 + o[1]) * s - m);
              return {x: left, y: top, width: Math.min(r.right, r.left + (x1 + o[0]) * s + m) - left,
                      height: Math.min(r.bottom, r.top + (y1 + o[1]) * s + m) - top};
            }""")
            self.page.screenshot(path=str(path), **kw)
        else:
            self.page.locator("#graph-canvas").screenshot(path=str(path), **kw)

    def close(self):
        self.browser.close()
        self._pw.stop()


def overlaps(nodes: list[dict], pad: float = 0.0) -> list[tuple]:
    """Pairs of nodes whose bounding boxes (title bar included) intersect."""
    out = []
    for i, a in enumerate(nodes):
        ax, ay, aw, ah = a["bounding"]
        for b in nodes[i + 1:]:
            bx, by, bw, bh = b["bounding"]
            if ax < bx + bw + pad and bx < ax + aw + pad and ay < by + bh + pad and by < ay + ah + pad:
                out.append((a["title"], b["title"]))
    return out
