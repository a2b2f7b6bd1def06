"""`python -m learning.aggregator`: see learning.programs."""

import sys

from learning.programs import aggregator

sys.exit(aggregator())
