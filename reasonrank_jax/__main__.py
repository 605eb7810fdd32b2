import sys

from reasonrank_jax.cli import main

sys.exit(main())
