"""Entrypoint for ``ray job submit --working-dir . -- python jobs/eval.py MODEL_DIR DATA --output DIR``.

Same arguments as ``rmray eval``.
"""

import sys

from rmray.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
