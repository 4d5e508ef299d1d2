"""comfy-nag core: Noise Awareness Guidance (Zhong et al., arXiv 2510.12497) as plain PyTorch.

The method only - no ComfyUI import, nothing from ``training``, ``studies`` or ``nodes``
(tests/test_import_direction.py).  Modules:

* ``schedules``   - the sampling spaces (``Space``), VP / flow / EDM schedules; sampling sigma, network time,
  log-SNR, null timestep.
* ``families``    - the model families (sd1 ... flux, dit, sit): every family fact, written once.
* ``predictions`` - eps / v / x0 / velocity / score conversions;  ``tensors`` - ``append_dims``.
* ``guidance``    - what to apply per step and how branches mix: CFG, classifier-free NAG, epsilon scaling.
* ``scale_profiles`` - per-level NAG scales and their least-squares fit.
* ``classifier_guidance`` - classifier-guided NAG: the estimator's gradient as a score / x0 term.
* ``null_branch`` - where classifier-free NAG's null branch comes from (learned, or from an estimator);
  ``posterior_null`` - the estimator posterior's quadrature levels.
* ``auto_scale``  - the closed-loop scale: NAG that sets its own strength from the estimator's reading.
* ``readout``     - the null-branch readout (classifier-free term against the estimator's).
* ``denoiser``    - a network as a batched, guided sampling-space denoiser.
* ``samplers``    - Euler, Heun, Euler-Maruyama, DDPM ancestral (k-diffusion shaped); the time-shift level fn.
* ``estimators``  - noise-level estimators (learned: vectors, image and video latents; training-free).
* ``shift``       - noise-shift measurement;  ``shift_report`` - for host samplers;  ``plots`` - figures.
* ``models``      - reference MLP and DiT/SiT with noise-condition dropout; ``losses`` - training loss.
* ``patching``    - host-independent pieces of the ComfyUI patches (null timestep, windows).
* ``metadata``, ``files`` - the safetensors metadata schema; safe, atomic safetensors I/O.

The method, and every decision the paper leaves open: docs/method.md.
"""
__version__ = "0.1.0"
