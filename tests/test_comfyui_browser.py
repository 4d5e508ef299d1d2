"""The shipped workflows in ComfyUI's real web frontend, in headless Chromium, as a user meets them.

Each workflow is dropped on the canvas as a file and opened from the template browser.  Checks: no
missing-nodes dialog, no console error naming the pack, node/link/widget counts equal the file's,
every widget value valid, every title shown whole, no two nodes overlapping, and text drawn (not the low-detail mode) at the
fit-to-view zoom of a 1600x1000 window.  A screenshot of each is saved to docs/img/workflows/.
Fonts: the canvas draws node text in LiteGraph.NODE_FONT ("Arial", i.e. whatever the machine's fontconfig
gives for it).  Each workflow is checked with the frontend's own font and again with each family of
browser_support.FONT_FAMILIES set as the node font: no title and no widget label or value cut, both by
measuring the texts (ctx.measureText in the node fonts, against the frontend's truncation widths) and by
recording every string the canvas draws in a redraw (no ellipsis).  A family that is not installed skips loudly.
Needs ComfyUI with its frontend package, playwright and Chromium; elsewhere it skips loudly.
"""
from __future__ import annotations

import json
import sys
import warnings

import pytest

from comfy_support import PACK_ROOT, comfy_or_skip

comfy_or_skip()

from browser_support import FONT_FAMILIES, TITLE_PAD, WIDGET_PAD, Frontend, browser_or_skip, cut_texts, overlaps  # noqa: E402

CHROMIUM = browser_or_skip()

from comfy_support import Server, load_pack, make_model_tree  # noqa: E402
from workflow_specs import SCREENSHOT_DIR, WORKFLOW_DIR, slug  # noqa: E402

WORKFLOWS = sorted((PACK_ROOT / WORKFLOW_DIR).glob("*.json"))
PACK = "comfy-nag"  # the custom_nodes folder name the test server installs the pack under
FILE_INPUTS = ("ckpt_name", "unet_name", "lora_name", "estimator_name", "clip_name", "vae_name")  # user's own files: any name is valid


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    load_pack()
    root = tmp_path_factory.mktemp("comfy_ui")
    make_model_tree(root)
    srv = Server(root, frontend=True).wait()
    f = None
    try:
        f = Frontend(srv.url, CHROMIUM)
        yield f
    finally:
        if f is not None:
            f.close()
        srv.stop()


def text_problems(front, family: str | None) -> list[str]:
    """Titles, widget labels and values that do not fit their node with ``family`` as the node font (None: the
    frontend's own), measured and as drawn (the whole graph must be in view)."""
    drawn = front.drawn_texts(family)
    out = [f"drawn cut: {t!r}" for t in cut_texts(drawn)]
    for n in front.texts(family):
        if n["title"] not in drawn:
            out.append(f"title '{n['title']}' not drawn whole")
        if n["title_text"] + TITLE_PAD > n["width"]:
            out.append(f"title '{n['title']}' needs {n['title_text'] + TITLE_PAD:.0f} px, the node is {n['width']:.0f}")
        for w in (w for w in n["widgets"] if w["type"] in WIDGET_PAD):
            need = w["label"] + w["value"] + WIDGET_PAD[w["type"]]
            if need > n["width"]:
                out.append(f"'{n['title']}': widget '{w['name']}' needs {need:.0f} px, the node is {n['width']:.0f}")
    return out


def check_graph(front, ui: dict, name: str):
    s = front.summary()
    assert not front.dialogs_text(), f"{name}: a dialog is open: {front.dialogs_text()[:500]}"
    assert not front.pack_errors(), front.pack_errors()
    assert len(s["nodes"]) == len(ui["nodes"]), (name, [n["type"] for n in s["nodes"]])
    assert s["links"] == len(ui["links"]), name
    by_id = {n["id"]: n for n in ui["nodes"]}
    for n in s["nodes"]:
        assert not n["has_errors"], (name, n["title"])
        assert n["width"] >= n["title_width"], f"{name}: the title '{n['title']}' is cut off"
        assert [w["value"] for w in n["widgets"]] == by_id[n["id"]]["widgets_values"], (name, n["title"])
        for w in n["widgets"]:
            o = w["options"] or {}
            if o.get("values") is not None and w["name"] not in FILE_INPUTS:
                assert w["value"] in o["values"], (name, n["title"], w)
            if isinstance(w["value"], (int, float)) and not isinstance(w["value"], bool):
                assert o.get("min") is None or w["value"] >= o["min"], (name, n["title"], w)
                assert o.get("max") is None or w["value"] <= o["max"], (name, n["title"], w)
            if w["name"] in FILE_INPUTS:
                assert str(w["value"]).endswith(".safetensors"), (name, w)
    assert not overlaps(s["nodes"]), (name, overlaps(s["nodes"]))
    front.fit()
    s = front.summary()
    assert not s["low_quality"], f"{name}: fit-to-view zoom {s['scale']:.2f} is below the frontend's low-detail threshold"
    problems = text_problems(front, None)
    assert not problems, f"{name}, the frontend's own node font: " + "; ".join(problems)
    return s


@pytest.mark.parametrize("wf", WORKFLOWS, ids=lambda p: slug(p.stem))
def test_workflow_dropped_on_canvas(front, wf):
    ui = json.loads(wf.read_text())
    front.clear()
    front.errors.clear()
    front.drop(wf.name, wf.read_text())
    check_graph(front, ui, wf.stem)
    front.screenshot(PACK_ROOT / SCREENSHOT_DIR / f"{slug(wf.stem)}.png")


def test_template_browser_shows_every_workflow_with_thumbnail_and_title(front):
    page = front.page
    names = sorted(p.stem for p in WORKFLOWS)
    assert sorted(page.evaluate("() => window.app.api.getWorkflowTemplates()")[PACK]) == names
    page.evaluate("() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    dialog = page.locator(".p-dialog").last
    dialog.wait_for(timeout=30_000)
    dialog.get_by_text(PACK, exact=True).first.click()
    page.wait_for_timeout(1500)
    listed = page.locator('.p-dialog [data-testid^="template-workflow-"]')
    cards = []
    for i in range(listed.count()):  # a card loads its thumbnail only while in view: read each one there
        card = listed.nth(i)
        card.scroll_into_view_if_needed()
        card.evaluate("(c) => new Promise(done => { const t0 = Date.now(); (function poll() { "
                      "const ok = Array.from(c.querySelectorAll('img')).some(i => i.complete && i.naturalWidth > 0); "
                      "if (ok || Date.now() - t0 > 10000) done(); else setTimeout(poll, 100); })(); })")
        cards.append(card.evaluate("(c) => ({text: c.innerText, imgs: Array.from(c.querySelectorAll('img'))"
                                   ".map(i => ({src: i.src, w: i.naturalWidth}))})"))
    assert len(cards) == len(names), cards
    for name in names:
        card = [c for c in cards if name in c["text"]]
        assert card, (name, [c["text"] for c in cards])
        assert any(i["w"] > 0 for i in card[0]["imgs"]), (name, card[0]["imgs"])  # the thumbnail was decoded
        status = page.evaluate("(u) => fetch(u).then(r => r.status)", f"/api/workflow_templates/{PACK}/{name}.jpg")
        assert status == 200, (name, status)
    listed.first.scroll_into_view_if_needed()  # the screenshot shows the list from its top
    page.wait_for_timeout(1000)
    page.screenshot(path=str(PACK_ROOT / SCREENSHOT_DIR / "template_browser.png"))
    first = WORKFLOWS[0]
    front.errors.clear()
    dialog.get_by_text(first.stem, exact=True).first.click()
    page.wait_for_timeout(2000)
    check_graph(front, json.loads(first.read_text()), first.stem)


@pytest.fixture(scope="module")
def fonts_present(front):
    return {f: front.font_present(f) for f in FONT_FAMILIES}


@pytest.mark.parametrize("family", FONT_FAMILIES, ids=slug)
@pytest.mark.parametrize("wf", WORKFLOWS, ids=lambda p: slug(p.stem))
def test_titles_and_widget_labels_whole_in_font(front, fonts_present, family, wf):
    if not fonts_present[family]:
        msg = f"SKIPPING the '{family}' font check: the font is not installed (Debian: fonts-dejavu-core, fonts-liberation2)"
        warnings.warn(msg)
        print("\n" + msg, file=sys.stderr)
        pytest.skip(msg)
    front.clear()
    front.load(json.loads(wf.read_text()))
    front.fit()
    assert not front.summary()["low_quality"], wf.stem
    problems = text_problems(front, family)
    assert not problems, f"{wf.stem}, node font '{family}': " + "; ".join(problems)
