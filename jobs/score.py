"""Entrypoint for ``ray job submit --working-dir . -- python jobs/score.py MODEL_DIR INPUT OUTPUT [options]``.

Same arguments as ``rmray score`` (``--top-k``, ``--concurrency``, ``--num-gpus``, ...). Inside a job it
joins the job's cluster (RAY_ADDRESS).
"""

import sys

from rmray.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
