import sys

from focus_jax.trained import main

sys.exit(main())
