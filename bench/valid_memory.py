"""Peak memory of the `valid` readability check (dataset.reader.readable) against the number of 12-Mpx PNGs.

    .venv/bin/python -m bench.valid_memory --counts 8 16 32

Each count runs in a fresh process that checks N 4000x3000 PNGs as client_train.py does before training (2 threads
here) and prints its peak RSS beside the RSS after imports: a streaming check stays flat in N; the old one, which
kept every decoded image, grew by ~36 MB per image (10,000 images: ~360 GB).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

CHILD = """
import resource, sys
from pathlib import Path
from dataset.reader import Skipped, readable
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
paths = sorted(Path(sys.argv[1]).glob('*.png'))[: int(sys.argv[2])]
ok = readable(paths, 73, Skipped(), threads=2)
assert all(ok)
print(base // 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", type=int, nargs="+", default=[8, 16, 32])
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        # A smooth gradient with noise: a real 12-Mpx PNG's decode cost, a small file.
        y, x = np.mgrid[0:3000, 0:4000]
        base = np.stack([(x * 255 // 4000), (y * 255 // 3000), ((x + y) * 255 // 7000)], -1).astype(np.uint8)
        for i in range(max(a.counts)):
            Image.fromarray(np.roll(base, i * 97, axis=1)).save(Path(folder) / f"{i:04d}.png", compress_level=1)
        print(f"{'PNGs (4000x3000)':>17}{'RSS after imports (MB)':>24}{'peak RSS (MB)':>15}{'check (MB)':>12}")
        for n in a.counts:
            out = subprocess.run([sys.executable, "-c", CHILD, folder, str(n)], capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(out.stderr[-2000:])
            before, peak = map(int, out.stdout.split())
            print(f"{n:>17}{before:>24}{peak:>15}{peak - before:>12}")


if __name__ == "__main__":
    main()
