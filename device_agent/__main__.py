"""``python -m device_agent``: the same flags as ``dnntune agent``."""

import sys

from dnntune.cli.main import main

sys.exit(main(["agent", *sys.argv[1:]]))
