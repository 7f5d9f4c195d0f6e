"""Step-time benchmark of the generated optimizers against torch.optim, optax and the memory-bandwidth limit.

Run ``python -m optforge.benchmarks [--quick] [--out DIR] [--rules A,B] [--repeats N]``: every rule on a fixed
float32 workload, in every backend (NumPy and torch with and without the fused path, JAX) and next to the
equivalent torch.optim (each mode) and optax configurations, back-to-back and with a cold cache. The
machine's in-place memory bandwidth, measured in the same run, gives each rule's limit: the bytes a step
must move per parameter (from the compiler's state analysis) times the parameters, over the bandwidth.
Writes ``benchmark.json`` and ``benchmark.md`` (tables and the performance goals, evaluated).
"""
