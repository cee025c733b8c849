import sys

from dimse.cli import main

sys.exit(main())
