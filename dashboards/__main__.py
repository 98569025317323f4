"""`python -m dashboards build --out DIR` / `python -m dashboards preview --prometheus URL --out FILE.png`."""

import sys

from dashboards.cli import main

sys.exit(main())
