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


# --- figures a person reads at a glance: legends off the data, bands that do not hide the lines ------------

def _drawn(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    return fig


def _legend_is_off_the_data(fig):
    legends = [lg for lg in fig.legends] + [ax.get_legend() for ax in fig.get_axes() if ax.get_legend()]
    assert legends, "no legend"
    for lg in legends:
        box = lg.get_window_extent()
        for ax in fig.get_axes():
            if ax.get_label() != "<colorbar>":
                assert not box.overlaps(ax.get_window_extent()), f"legend covers {ax.get_title()!r}"


def _runs(n_runs, steps=20, reference=True):
    import numpy as np

    nominal = np.linspace(-6, 6, steps)
    runs = []
    for k in range(n_runs):
        r = {"label": f"run {k}", "nominal": nominal, "estimated_mean": nominal - 0.1 * k, "estimated_std": np.ones(steps)}
        if reference:
            r["reference_mean"] = nominal
        runs.append(r)
    return runs


def _shaded(ax):
    from matplotlib.collections import PolyCollection

    return [c for c in ax.collections if isinstance(c, PolyCollection)]


def test_the_comfyui_plot_call_still_works_and_its_legend_is_off_the_data():
    """nodes/shift_nodes.py calls shift_figure(runs, window=..., title=...) with runs lacking reference_mean."""
    import numpy as np

    runs = _runs(2, reference=False)
    runs[0]["nominal"] = np.concatenate([[np.nan], runs[0]["nominal"][1:]])  # the first step's level can be inf
    fig = _drawn(plots.shift_figure(runs, window=(10, 19), title="Noise shift"))
    level, gap = fig.get_axes()
    assert len(_shaded(level)) == 2 and not _shaded(gap)  # two runs: both spreads, never on the shift panel
    assert "scheduled level" in gap.get_title()  # no forward reference: the gap is against the schedule
    _legend_is_off_the_data(fig)
    assert plots.to_pil(fig).width < 1400  # README-sized


def test_many_runs_shade_one_spread_and_keep_plain_labels():
    fig = _drawn(plots.shift_figure(_runs(5), window=(10, 19)))
    level, gap = fig.get_axes()
    assert len(_shaded(level)) == 1 and not _shaded(gap)
    assert "higher = cleaner" in level.get_ylabel() and "true noisy data" in gap.get_title()
    assert "step" in level.get_xlabel()
    assert len(_shaded(_drawn(plots.shift_figure(_runs(5), bands="all")).get_axes()[0])) == 5
    assert not _shaded(_drawn(plots.shift_figure(_runs(2), bands="none")).get_axes()[0])


def _committed(path):
    import json
    from pathlib import Path

    return json.loads((Path(__file__).resolve().parents[1] / path).read_text())


def test_study_shift_figure_has_a_panel_per_family_in_the_method_colours():
    from studies import harness

    res = _committed("docs/demo/metrics.json")
    for name, pdata in res["plots"].items():
        (fig,) = harness.shift_figures(pdata, name, "exact noise-level posterior")
        _drawn(fig)
        _legend_is_off_the_data(fig)
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert {"NAG-CF", "NAG-CG", "baseline (no guidance)", "true noisy data (forward process)"} <= set(labels)
        assert not any("_" in lab for lab in labels)  # no internal method names
        colours = {line.get_label(): line.get_color() for line in fig.get_axes()[0].get_lines()}
        assert colours["NAG-CF"] == methods.COLORS["nag_cf"] and colours["NAG-CG"] == methods.COLORS["nag_cg"]
        assert len(fig.get_axes()) == 2 + len(pdata["kde"]["levels"])


def test_fidelity_figures_keep_the_legend_off_the_lines_and_speak_plainly():
    from studies import demo_report, fidelity_report

    for fig in (demo_report.fidelity_figure(_committed("docs/demo/metrics.json")),
                fidelity_report.figure(_committed("docs/fidelity/fidelity.json"))):
        _drawn(fig)
        _legend_is_off_the_data(fig)
        text = " ".join(t.get_text() for lg in fig.legends for t in lg.get_texts())
        text += " ".join(ax.get_ylabel() + ax.get_xlabel() for ax in fig.get_axes())
        assert "agreement with the exact NAG term" in text and "c - n" not in text and "c − n" not in text
