import sys

from podspool.cli import main

sys.exit(main())
