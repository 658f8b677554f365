"""Entrypoint for ``ray job submit --working-dir . -- python jobs/train.py [CONFIG.yaml] [key=value ...]``.

Same arguments as ``rmray train`` (a YAML file, overrides, or overrides alone). Inside a job it joins
the job's cluster (RAY_ADDRESS).
"""

import sys

from rmray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
