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
# The frontend draws node text in LiteGraph.NODE_FONT ("Arial": each machine's fontconfig picks what that is).
# Titles and widget labels are checked in each of these (Debian: fonts-dejavu-core, fonts-liberation2), and the
# workflow generator fits node widths to the widest of them.
FONT_FAMILIES = ("DejaVu Sans", "Liberation Sans")
# Width a canvas widget needs besides its label and value text: BaseWidget.margin 15 on both sides of the
# capsule and of the text area, label-value gap 5, and the widget's own text padding (number/combo: 5 + 20 for
# the arrows; text: 0; toggle: its value is drawn right-aligned 40 px from the edge).  Frontend 1.27.
WIDGET_PAD = {"number": 90, "combo": 90, "text": 65, "string": 65, "toggle": 75}
TITLE_PAD = 60  # a title is cut beyond the node's width minus twice LiteGraph.NODE_TITLE_HEIGHT


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

# Is a font family installed?  A string measured in "family, generic" differs from the generic font alone.
FONT_PRESENT_JS = """(fam) => {
  const ctx = document.createElement('canvas').getContext('2d'), s = 'mmmmmmmmmmlliiWW@#0.,';
  return ['monospace', 'serif', 'sans-serif'].some(g => {
    ctx.font = `32px ${g}`; const a = ctx.measureText(s).width;
    ctx.font = `32px "${fam}", ${g}`; return ctx.measureText(s).width !== a; });
}"""

# Set LiteGraph.NODE_FONT (the family, or the frontend's own when null) for the duration of `body`, with a redraw.
WITH_FONT_JS = """(fam, body) => {
  const LG = window.LiteGraph, c = window.app.canvas, old = LG.NODE_FONT;
  if (fam) LG.NODE_FONT = `"${fam}"`;
  try { c.setDirty(true, true); return body(c); } finally { LG.NODE_FONT = old; c.setDirty(true, true); }
}"""

# Text widths each node's title and canvas widgets (not DOM ones like the prompt boxes) have, in the node fonts.
TEXTS_JS = """(fam) => (%s)(fam, () => {
  const ctx = document.createElement('canvas').getContext('2d');
  const w = (t, font) => { ctx.font = font; return ctx.measureText(String(t ?? '')).width; };
  return window.app.graph._nodes.map(n => ({
    id: n.id, title: n.title, width: n.size[0], least: Array.from(n.computeSize()), title_text: w(n.title, n.titleFontStyle),
    widgets: (n.widgets || []).filter(x => !x.element && typeof x.draw !== 'function').map(x => ({
      name: x.displayName ?? x.label ?? x.name, type: x.type,
      label: w(x.displayName ?? x.label ?? x.name, n.innerFontStyle),
      value: w(x._displayValue ?? x.value, n.innerFontStyle)}))}));
})""" % WITH_FONT_JS

# Every string the canvas draws in one full redraw; the frontend marks a cut title with a trailing '...' and
# a cut widget label or value with a separate '\u2026' (or a one/two-dot leader) after the text that fits.
DRAWN_JS = """(fam) => (%s)(fam, (c) => {
  const drawn = [], P = CanvasRenderingContext2D.prototype, fill = P.fillText;
  P.fillText = function (t, ...a) { drawn.push(String(t)); return fill.call(this, t, ...a); };
  try { c.draw(true, true); } finally { P.fillText = fill; }
  return drawn;
})""" % WITH_FONT_JS

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

    def font_present(self, family: str) -> bool:
        return self.page.evaluate(FONT_PRESENT_JS, family)

    def texts(self, family: str | None = None) -> list[dict]:
        """Per node: id, title, width, ``least`` (computeSize), text widths of the title and of each canvas
        widget's label and value, measured in ``family`` as the node font (None: the frontend's own)."""
        return self.page.evaluate(TEXTS_JS, family)

    def drawn_texts(self, family: str | None = None) -> list[str]:
        """Every string the canvas draws in one full redraw with ``family`` as the node font (None: the frontend's)."""
        return self.page.evaluate(DRAWN_JS, family)

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


def cut_texts(drawn: list[str]) -> list[str]:
    """The texts of :meth:`Frontend.drawn_texts` that the frontend drew cut (ending in an ellipsis)."""
    cut = []
    for i, t in enumerate(drawn):
        if t in ("\u2026", "\u2025", "\u2024"):
            cut.append((drawn[i - 1] if i else "") + t)
        elif t.endswith("...") and len(t) > 3:
            cut.append(t)
    return cut


def needed_width(node: dict, safety: float = 1.0) -> float:
    """Width a node (an item of :meth:`Frontend.texts`) needs to show its title and each canvas widget's
    label and value whole, with text widths times ``safety``; at least the frontend's computeSize."""
    rows = [node["least"][0], node["title_text"] * safety + TITLE_PAD]
    rows += [(w["label"] + w["value"]) * safety + WIDGET_PAD[w["type"]] for w in node["widgets"] if w["type"] in WIDGET_PAD]
    return max(rows)


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
