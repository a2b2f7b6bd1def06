"""`python -m learning.datawait`: see learning.programs."""

import sys

from learning.programs import datawait

sys.exit(datawait())
