import sys

from dnntune.cli.main import main

sys.exit(main())
