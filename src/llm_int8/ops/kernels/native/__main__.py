"""``python -m llm_int8.ops.kernels.native``: build (or load) the C++ CPU kernels now and say how it went.

``scripts/install.sh`` runs this so that the first forward does not pay the one-time build. Exit code
0 either way: without a compiler the library runs its PyTorch fallback, which is not an install error.
"""

import logging
import time

from . import build_directory, ops, reason

logging.basicConfig(level=logging.INFO, format="%(message)s")
start = time.perf_counter()
namespace = ops()
seconds = time.perf_counter() - start
if namespace is None:
    print(f"llm-int8 CPU kernels: not built ({reason()}); the PyTorch fallback will run (same results, slower)")
else:
    print(f"llm-int8 CPU kernels: ready in {build_directory()} ({seconds:.1f} s)")
