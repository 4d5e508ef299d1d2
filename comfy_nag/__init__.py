"""comfy-nag core: Noise Awareness Guidance (Zhong et al., arXiv 2510.12497) as plain PyTorch.

No ComfyUI import anywhere in this package.  Modules:

* ``schedules``   - VP / flow / EDM schedules; sampling sigma, network time, log-SNR.
* ``predictions`` - eps / v / x0 / velocity / score conversions.
* ``guidance``    - CFG, classifier-free and classifier-guided NAG, epsilon scaling, time shift.
* ``denoiser``    - a network as a batched, guided sampling-space denoiser.
* ``samplers``    - Euler, Heun, Euler-Maruyama, DDPM ancestral.
* ``estimators``  - noise-level estimators (learned, training-free).
* ``shift``       - noise-shift measurement;  ``plots`` - its figures.
* ``models``      - reference MLP and DiT/SiT with noise-condition dropout; ``losses`` - training loss.
* ``testbed``     - the exact Gaussian-mixture testbed;  ``demo`` - the main job.
* ``files``       - safe, atomic safetensors I/O.
"""
__version__ = "0.1.0"
