import sys

from dnntune.cli import main

sys.exit(main())
