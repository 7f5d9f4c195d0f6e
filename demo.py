"""`python -m optforge.demo`: the generated optimizers of every rule, in NumPy, JAX and torch, side by side.

Each optimizer minimises the same ill-conditioned quadratic f(x) = 1/2 sum(a_i x_i^2)
from the same start; the three backends print the same losses.
"""

from __future__ import annotations

import numpy as np


def main() -> None:
    from optforge.rules import registry

    a = np.array([0.5, 2.0, 5.0])
    x0 = np.array([1.0, 1.0, 1.0])
    steps = 200
    print(f"minimising 1/2 sum(a*x^2), a = {a.tolist()}, from x = {x0.tolist()}, {steps} steps, float64\n")
    print("(a closed loop: the gradient depends on x, so a 1-ulp difference between backends can grow; the")
    print(" open-loop tests hold the backends to 1e-12 relative in float64)\n")
    print(f"{'optimizer':<10} {'config':<16} {'numpy':>12} {'jax':>12} {'torch':>12} {'max rel. diff':>14}")
    for rule in registry().values():
        for name, cfg in rule.configs.items():
            losses = [run(backend, rule, cfg, a, x0, steps) for backend in ("numpy", "jax", "torch")]
            spread = (max(losses) - min(losses)) / max(abs(min(losses)), 1e-300)
            print(
                f"{rule.name:<10} {name:<16} " + " ".join(f"{v:12.6e}" for v in losses) + f" {spread:14.1e}"
            )


def run(backend: str, rule, cfg: dict, a: np.ndarray, x0: np.ndarray, steps: int) -> float:
    if backend == "numpy":
        import optforge.generated.numpy as gen

        opt = getattr(gen, rule.name)(**cfg)
        x = [x0.copy()]
        state = opt.init(x)
        for _ in range(steps):
            x, state = opt.step(x, [a * x[0]], state)
        return float(0.5 * np.sum(a * x[0] ** 2))
    if backend == "jax":
        import jax
        import jax.numpy as jnp
        import optax

        import optforge.generated.jax as gen

        jax.config.update("jax_enable_x64", True)
        tx = getattr(gen, rule.module)(**cfg)
        x = jnp.asarray(x0)
        aj = jnp.asarray(a)
        state = tx.init(x)

        @jax.jit
        def step(x, state):
            updates, state = tx.update(aj * x, state, x)
            return optax.apply_updates(x, updates), state

        for _ in range(steps):
            x, state = step(x, state)
        return float(0.5 * jnp.sum(aj * x**2))
    import torch

    import optforge.generated.torch as gen

    kw = dict(cfg)
    if "learning_rate" in kw:
        kw["lr"] = kw.pop("learning_rate")
    x = torch.tensor(x0, requires_grad=True)
    at = torch.tensor(a)
    opt = getattr(gen, rule.name)([x], **kw)
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.5 * torch.sum(at * x**2)
        loss.backward()
        opt.step()
    return float(0.5 * torch.sum(at * x.detach() ** 2))


if __name__ == "__main__":
    main()
