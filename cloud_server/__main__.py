"""``python -m cloud_server``: the same flags as ``dnntune serve``."""

import sys

from dnntune.cli.main import main

sys.exit(main(["serve", *sys.argv[1:]]))
