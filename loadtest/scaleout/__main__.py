import sys

from loadtest.scaleout.cli import main

sys.exit(main())
