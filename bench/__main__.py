"""``python -m bench``: every benchmark, one ``BENCHMARKS.md`` (see :mod:`bench.run`)."""

import sys

from bench.run import main

sys.exit(main())
