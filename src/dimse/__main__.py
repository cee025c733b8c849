import sys

from dimse.launcher import main

sys.exit(main())
