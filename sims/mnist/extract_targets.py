"""Write the first K images of an MNIST IDX file as a (K, rows * cols) uint8 .npy.

Usage: python sims/mnist/extract_targets.py IDX_FILE OUT.npy [K=100]
"""
import io
import sys

import numpy as np

from particlegan.errors import ParticleGANError
from particlegan.store.storage import atomic_write_bytes, read_idx


def main(argv):
    if len(argv) not in (2, 3):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    k = int(argv[2]) if len(argv) == 3 else 100
    try:
        imgs = read_idx(argv[0], "IDX_FILE", max_items=k)
        buf = io.BytesIO()
        np.save(buf, imgs.reshape(len(imgs), -1).astype(np.uint8))
        atomic_write_bytes(argv[1], buf.getvalue())
    except ParticleGANError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
