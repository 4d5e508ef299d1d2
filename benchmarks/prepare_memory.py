"""Peak memory of `python -m training prepare` on a folder of large images, against the dataset size.

Generates ``--images`` smooth random JPEGs of ``--size``² pixels (no downloads), runs
``python -m training prepare`` on them in a child process (pixel encoder, ``--resolution``² RGB,
``--batch`` images per batch) and prints the child's peak resident memory (``ru_maxrss``) next to
what holding every image as float32 at once would take (the pre-streaming ``prepare``).

    ./run.sh python benchmarks/prepare_memory.py --images 200
    ./run.sh python benchmarks/prepare_memory.py --images 2000 --keep-images /tmp/imgs2000

The cache is written under ``--work`` (default: a temporary folder, removed afterwards); at the
default resolution 256 it takes 0.79 MB per image on disk.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_images(folder: Path, n: int, size: int, seed: int = 0) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        p = folder / f"{i:05d}.jpg"
        if p.exists():
            continue
        small = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
        small.resize((size, size), Image.Resampling.BILINEAR).save(p, quality=90)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=1024, help="side of the generated images")
    ap.add_argument("--resolution", type=int, default=256, help="data.resolution of the cache")
    ap.add_argument("--batch", type=int, default=8, help="data.encode_batch_size")
    ap.add_argument("--work", default="", help="folder for the cache (default: temporary)")
    ap.add_argument("--keep-images", default="", help="generate/reuse the images in this folder")
    args = ap.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="prepare_memory_"))
    images = Path(args.keep_images) if args.keep_images else work / "images"
    t0 = time.perf_counter()
    make_images(images, args.images, args.size)
    t_gen = time.perf_counter() - t0
    cache = work / "cache.safetensors"
    cmd = [sys.executable, "-m", "training", "prepare", "--set", "data.source='folder'", "--set",
           f"data.path='{images}'", "--set", f"data.resolution={args.resolution}", "--set",
           f"data.encode_batch_size={args.batch}", "--set", f"data.limit={args.images}", "--cache", str(cache)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    t_prep = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout)
        return proc.returncode
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
    all_at_once_mb = args.images * args.resolution ** 2 * 3 * 4 / 2**20
    print(f"images            {args.images} JPEGs of {args.size}x{args.size} (generated in {t_gen:.0f} s)")
    print(f"cache             {args.resolution}x{args.resolution} RGB pixels, {cache.stat().st_size / 2**20:.0f} MiB, "
          f"batches of {args.batch}")
    print(f"prepare           {t_prep:.0f} s wall")
    print(f"peak RSS          {peak_mb:.0f} MiB (child process, ru_maxrss)")
    print(f"all images as float32 at once would be {all_at_once_mb:.0f} MiB before encoding")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
