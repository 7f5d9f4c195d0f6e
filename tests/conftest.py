import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax

jax.config.update("jax_enable_x64", True)
