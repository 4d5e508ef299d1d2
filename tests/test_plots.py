"""Figures: every method keeps one colour of its own in every panel and every study."""
from comfy_nag import plots
from studies import methods


def test_every_study_method_has_its_own_colour():
    names = methods.METHODS + methods.ABLATIONS
    assert set(names) <= set(methods.COLORS)
    colours = [methods.COLORS[m] for m in names]
    assert len(set(colours)) == len(colours) and plots.FORWARD_COLOR not in colours


def test_assigned_colours_are_distinct_and_stable_across_panels():
    fixed = methods.COLORS
    a = plots.assign_colors(["baseline", "nag_cf", "nag_cg", "cfg", "nag_cf+cfg", "my run"], fixed)
    b = plots.assign_colors(["forward (true states)", "nag_cg", "baseline"], fixed)
    assert len(set(a.values())) == len(a) and len(set(b.values())) == len(b)
    assert a["nag_cg"] == b["nag_cg"] == fixed["nag_cg"] and a["baseline"] == b["baseline"]
    assert b["forward (true states)"] == plots.FORWARD_COLOR
    # labels without a fixed colour (e.g. the ComfyUI recorder's) get distinct ones while the palette lasts
    free = plots.assign_colors([f"run {i}" for i in range(len(plots.COLORS))])
    assert len(set(free.values())) == len(plots.COLORS)
