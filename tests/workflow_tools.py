"""Build UI-format (litegraph) workflows from a compact spec, and convert UI workflows to the API format.

ComfyUI's backend has no UI->API converter (the frontend does it); this one follows the same rules
for the graphs we ship: widget values are positional in ``/object_info`` ``input_order`` (required,
then optional) for inputs that are not linked, with one extra value after any input that has
``control_after_generate``; Note/MarkdownNote nodes are frontend-only and dropped.
"""
from __future__ import annotations

FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _ordered_inputs(info: dict) -> list[tuple[str, str, dict]]:
    out = []
    for group in ("required", "optional"):
        spec = info["input"].get(group, {})
        for name in info.get("input_order", {}).get(group, list(spec)):
            t = spec[name]
            kind = "COMBO" if isinstance(t[0], list) else t[0]
            opts = dict(t[1]) if len(t) > 1 else {}
            if isinstance(t[0], list):  # a V1 combo lists its options in place of its type
                opts.setdefault("options", t[0])
            out.append((name, kind, opts))
    return out


def is_widget(kind: str) -> bool:
    return kind in WIDGET_TYPES


TITLE_H, GAP_X, GAP_Y = 30, 40, 20  # the frontend draws a node's title bar above its pos


def layout(spec: list[dict], sizes: dict[int, list[float]]) -> dict[int, list[float]]:
    """Positions for nodes stacked top-down in their ``col``; columns side by side, nothing overlapping."""
    cols: dict[int, list[dict]] = {}
    for n in spec:
        cols.setdefault(n["col"], []).append(n)
    pos, x = {}, 0.0
    for c in sorted(cols):
        y = 0.0
        for n in cols[c]:
            pos[n["id"]] = [x, y + TITLE_H]
            y += TITLE_H + sizes[n["id"]][1] + GAP_Y
        x += max(sizes[n["id"]][0] for n in cols[c]) + GAP_X
    return pos


def build_ui(spec: list[dict], object_info: dict, title: str = "", sizes: dict[int, list[float]] | None = None) -> dict:
    """``spec``: nodes ``{"id", "type", "col", "widgets": {name: value}, "links": {input: (src_id, src_slot)},
    "title"?, "size"?, "text"? (notes)}``; ``sizes``: measured node sizes (tests/workflow_specs.py)."""
    sizes = {n["id"]: list((sizes or {}).get(n["id"]) or n.get("size", [320, 160])) for n in spec}
    where = layout(spec, sizes)
    nodes, links, by_id = [], [], {n["id"]: n for n in spec}
    outs_links: dict[tuple[int, int], list[int]] = {}
    link_of: dict[tuple[int, str], list] = {}
    for n in spec:
        for inp, (src, slot) in n.get("links", {}).items():
            lid = len(links) + 1
            info = object_info[by_id[src]["type"]]
            links.append([lid, src, slot, n["id"], None, info["output"][slot]])
            link_of[(n["id"], inp)] = links[-1]
            outs_links.setdefault((src, slot), []).append(lid)
    for order, n in enumerate(spec):
        node = {"id": n["id"], "type": n["type"], "pos": where[n["id"]], "size": sizes[n["id"]],
                "flags": {}, "order": order, "mode": 0, "properties": {"Node name for S&R": n["type"]}}
        if n.get("title"):
            node["title"] = n["title"]
        if n["type"] in FRONTEND_ONLY:
            node["widgets_values"] = [n["text"]]
            node["color"], node["bgcolor"] = "#432", "#653"
            node["inputs"], node["outputs"] = [], []
            nodes.append(node)
            continue
        info = object_info[n["type"]]
        inputs, widgets = [], []
        for name, kind, opts in _ordered_inputs(info):
            if name in n.get("links", {}):
                link = link_of[(n["id"], name)]
                link[4] = len(inputs)
                inputs.append({"name": name, "type": kind, "link": link[0]})
            elif is_widget(kind):
                widgets.append(n.get("widgets", {}).get(name, opts.get("default", (opts.get("options") or [None])[0])))
                if opts.get("control_after_generate"):
                    widgets.append("fixed")
            else:
                inputs.append({"name": name, "type": kind, "link": None})
        node["inputs"] = inputs
        node["outputs"] = [{"name": nm, "type": t, "links": outs_links.get((n["id"], i), []), "slot_index": i}
                           for i, (nm, t) in enumerate(zip(info["output_name"], info["output"]))]
        node["widgets_values"] = widgets
        node["properties"]["cnr_id"] = "comfy-core" if info.get("python_module", "").startswith("comfy") else "noise-awareness-guidance"
        nodes.append(node)
    return {"last_node_id": max(n["id"] for n in spec), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {"info": {"title": title}}, "version": 0.4}


def to_api(ui: dict, object_info: dict, substitute=None) -> dict:
    """UI workflow -> API prompt.  ``substitute(node_type, inputs) -> (node_type, inputs)`` may swap nodes
    (tests replace text encoders and model file names)."""
    links = {l[0]: l for l in ui["links"]}
    prompt = {}
    for n in ui["nodes"]:
        if n["type"] in FRONTEND_ONLY or n.get("mode", 0) in (2, 4):
            continue
        info = object_info[n["type"]]
        linked = {i["name"]: i["link"] for i in n.get("inputs", []) if i.get("link") is not None}
        values = list(n.get("widgets_values", []))
        inputs = {}
        for name, kind, opts in _ordered_inputs(info):
            if name in linked:
                l = links[linked[name]]
                inputs[name] = [str(l[1]), l[2]]
            elif is_widget(kind):
                if not values:
                    raise ValueError(f"node {n['id']} ({n['type']}): no widget value for input '{name}'")
                inputs[name] = values.pop(0)
                if opts.get("control_after_generate"):
                    values.pop(0)
        node_type = n["type"]
        if substitute is not None:
            node_type, inputs = substitute(node_type, inputs)
        prompt[str(n["id"])] = {"class_type": node_type, "inputs": inputs}
    return prompt
