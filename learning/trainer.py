"""`python -m learning.trainer`: see learning.programs."""

import sys

from learning.programs import trainer

sys.exit(trainer())
