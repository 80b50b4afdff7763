import sys

from fastrelay.cli import main

sys.exit(main())
