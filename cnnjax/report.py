"""`python -m cnnjax.report SWEEP_DIR_OR_SWEEP_PY [--out=DIR] [--readme]`: the tables and
figures of a sweep (the implementation and its documentation: cnnjax/tools/report.py)."""

import sys

from cnnjax.tools.report import main

if __name__ == "__main__":
    sys.exit(main())
