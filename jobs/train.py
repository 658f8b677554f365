"""Entrypoint for ``ray job submit --working-dir . -- python jobs/train.py CONFIG.yaml [key=value ...]``."""

import sys

from rmray.config import load_config
from rmray.train.run import train


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python jobs/train.py CONFIG.yaml [key=value ...]")
    train(load_config(sys.argv[1], sys.argv[2:]))


if __name__ == "__main__":
    main()
