"""Studies of Noise Awareness Guidance: the exact testbed, the demo and the benchmarks.

Run from the repository root (``python -m studies demo | fidelity | capacity | estimator | last-step | auto-bound |
bench images | bench cost``); they use the method library ``comfy_nag`` and, for the image benchmark, the standalone
trainer ``training``.

Support (no study imports another study; they share these):

* ``testbed``      - class-conditional Gaussian mixtures where every density is closed form.
* ``methods``      - the methods compared, as one table (name -> the knobs its row records, its guidance).
* ``criteria``     - the closed-loop scale against the baseline, the tuned constant and epsilon scaling.
* ``runs``         - one sampling run with its noise-shift readouts and scores, its row in metrics.json, and
  knob tuning on a held-out seed (the exact testbed and the image benchmark alike).
* ``harness``      - the noise-shift figures, report tables, finished stages, and the start and end of every
  study command.
* ``toolkit``      - the exact-testbed studies' toolkit: a family's denoiser and estimator trained on a
  mixture, its evaluation and rows, knob tuning, the calibrated scale, the criterion.
* ``terms``        - how much of the exact NAG term the learned terms carry (the fidelity measurement).

Studies (each may have parts of its own that only it imports: its settings, its report):

* ``demo``         - the exact-testbed study (``demo_report``: its report and figures).
* ``bench_images`` - the 8x8-digits study (``bench_digits``: settings, data and metric; ``bench_report``: its
  report and figures);  ``bench_cost`` - per-step time and memory of each guidance mode.
* ``fidelity``     - null-branch recipes against the exact NAG term (``fidelity_recipes``: the recipes and
  settings; ``fidelity_report``: its report and figure);  ``capacity`` - the null branch against the network's
  size and training length;  ``cg_estimator`` - estimator recipes for classifier-guided NAG;  ``last_step`` -
  where a sampler's late shift comes from;  ``auto_bound`` - how the closed-loop scale's bound was fixed.
"""
