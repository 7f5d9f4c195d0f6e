"""`optforge plots`: each optimizer's loss over steps on two small standard problems, in the three backends,
and every optimizer on the same problems in one picture.

The Rosenbrock function (from (-1.5, 2)) and a logistic regression on generated data, float64. Each
optimizer runs at the learning rate that ends lowest in a sweep (``LEARNING_RATES``, NumPy, its other
hyperparameters at their defaults): one fixed rate for all would show some optimizers stalled (Nadam on
Rosenbrock at 0.002 levels off near 6) where they are only slow at that rate. On a rule's page the three
backends' curves are drawn over each other: they coincide, which is the point of that picture;
``docs/compare.png`` (the index shows it) draws every optimizer on the same axes.

The pictures are committed (the pages show them, the site copies them), so they hold only what a change
of the last bits of a result cannot move: the curves at 80 dpi and fixed text. The largest relative
difference between the backends is not drawn: in a closed loop (the gradient read at the parameters the
step wrote) a one-ulp change of any generated statement moves it by orders of magnitude (NovoGradTF1 on
Rosenbrock: 8e-7), so a title that printed it changed at each refactor of the compiler. `optforge plots`
prints it instead; the tests hold the backends to 1e-12 in an open loop. Each picture carries a digest of
what it was drawn from (``inputs``: the rule's generated modules, the runtime, this module, the libraries'
versions); `optforge plots` draws again those whose inputs changed, and tests/test_plots.py fails on a
picture whose digest is not its inputs', and redraws one rule's picture to check that drawing gives the
committed pixels.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import pathlib

import numpy as np

STEPS = {"rosenbrock": 300, "logistic": 150}
#: the sweep: each optimizer is drawn at the rate of these that ends lowest on the problem
LEARNING_RATES = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def _logistic_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    true = np.array([1.5, -2.0, 0.5, 0.0, 1.0])
    y = (x @ true + 0.3 * rng.normal(size=200) > 0).astype(np.float64)
    return x, y


def _loss_and_grad_numpy(problem, params):
    if problem == "rosenbrock":
        (p,) = params
        a, b = p
        loss = (1 - a) ** 2 + 100 * (b - a * a) ** 2
        grad = np.array([-2 * (1 - a) - 400 * a * (b - a * a), 200 * (b - a * a)])
        return float(loss), [grad]
    x, y = _logistic_data()
    wt, bias = params
    z = x @ wt + bias
    prob = 1 / (1 + np.exp(-z))
    loss = float(np.mean(np.logaddexp(0, z) - y * z))
    r = (prob - y) / len(y)
    return loss, [x.T @ r, np.asarray(np.sum(r))]


def _start(problem):
    if problem == "rosenbrock":
        return [np.array([-1.5, 2.0])]
    return [np.zeros(5), np.asarray(0.0)]


def numpy_curve(rule, problem: str, learning_rate: float, nudge: float = 0.0) -> list[float]:
    """The loss before each step and after the last, in NumPy (non-finite where the run diverges), from the
    problem's start moved by ``nudge`` (relative)."""
    import optforge.generated.numpy as gn

    opt = getattr(gn, rule.name)(**{**rule.configs["default"], "learning_rate": learning_rate})
    params = [np.asarray(p * (1 + nudge) + nudge) for p in _start(problem)]
    state = opt.init(params)
    losses = []
    with np.errstate(all="ignore"):  # a rate too large for the problem overflows: the sweep passes it over
        for _ in range(STEPS[problem]):
            loss, grads = _loss_and_grad_numpy(problem, params)
            losses.append(loss)
            params, state = opt.step(params, grads, state, **({"value": loss} if rule.reads_loss else {}))
        losses.append(_loss_and_grad_numpy(problem, params)[0])
    return losses


#: a run is stable where moving its start by NUDGE (relative) moves its last loss by at most STABLE (relative)
NUDGE, STABLE = 1e-10, 1e-6


@functools.cache
def best_learning_rate(rule, problem: str) -> float:
    """The rate of the sweep whose run ends lowest (the smaller rate on a tie) among the stable runs: a run
    whose last loss a change of its start in the 10th digit moves by more than a millionth is chaotic (a
    large rate on Rosenbrock), its end an accident of rounding that no two implementations share. The
    runs are tried for stability from the lowest end up, until one is stable; where none is (no rule of
    the registry), the smallest rate of the sweep."""
    ends = [(numpy_curve(rule, problem, lr)[-1], i) for i, lr in enumerate(LEARNING_RATES)]
    for last, i in sorted(e for e in ends if np.isfinite(e[0])):
        moved = numpy_curve(rule, problem, LEARNING_RATES[i], nudge=NUDGE)[-1]
        if abs(moved - last) <= STABLE * abs(last):
            return LEARNING_RATES[i]
    return LEARNING_RATES[0]


def curves(rule, problem: str, learning_rate: float) -> dict[str, list[float]]:
    """Loss after each step, per backend."""
    import jax
    import jax.numpy as jnp
    import optax
    import torch

    import optforge.generated.jax as gj
    import optforge.generated.numpy as gn
    import optforge.generated.torch as gt

    jax.config.update("jax_enable_x64", True)
    cfg = {**rule.configs["default"], "learning_rate": learning_rate}
    out = {}

    opt = getattr(gn, rule.name)(**cfg)
    params = _start(problem)
    state = opt.init(params)
    losses = []
    for _ in range(STEPS[problem]):
        loss, grads = _loss_and_grad_numpy(problem, params)
        losses.append(loss)
        params, state = opt.step(params, grads, state, **({"value": loss} if rule.reads_loss else {}))
    out["numpy"] = losses

    x, y = _logistic_data()

    def jloss(params):
        if problem == "rosenbrock":
            a, b = params[0]
            return (1 - a) ** 2 + 100 * (b - a * a) ** 2
        z = jnp.asarray(x) @ params[0] + params[1]
        return jnp.mean(jnp.logaddexp(0, z) - jnp.asarray(y) * z)

    tx = getattr(gj, rule.module)(**cfg)
    params = [jnp.asarray(p) for p in _start(problem)]
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(jloss)(params)
        updates, state = tx.update(grads, state, params, **({"value": loss} if rule.reads_loss else {}))
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for _ in range(STEPS[problem]):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    out["jax"] = losses

    kw = {("lr" if k == "learning_rate" else k): v for k, v in cfg.items()}
    params = [torch.tensor(p, requires_grad=True) for p in _start(problem)]
    topt = getattr(gt, rule.name)(params, **kw)
    xt, yt = torch.tensor(x), torch.tensor(y)
    losses = []
    for _ in range(STEPS[problem]):
        topt.zero_grad()
        if problem == "rosenbrock":
            a, b = params[0][0], params[0][1]
            loss = (1 - a) ** 2 + 100 * (b - a * a) ** 2
        else:
            z = xt @ params[0] + params[1]
            loss = torch.mean(torch.logaddexp(torch.zeros_like(z), z) - yt * z)
        loss.backward()
        losses.append(loss.item())
        topt.step(**({"value": loss} if rule.reads_loss else {}))
    out["torch"] = losses
    return out


def spread(c: dict[str, list[float]]) -> float:
    ref = np.asarray(c["numpy"])
    return max(
        float(np.max(np.abs(np.asarray(v) - ref) / np.maximum(np.abs(ref), 1e-300))) for v in c.values()
    )


@dataclasses.dataclass(frozen=True)
class Plot:
    """One rule's picture and what it was drawn from."""

    rule: str
    png: bytes
    spread: dict[str, float]  # per problem: the largest relative difference between the backends' losses


def draw(rule) -> Plot:
    """The picture of one rule, as PNG bytes: the same bytes for the same curves and matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spreads = {}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, problem in zip(axes, STEPS):
        lr = best_learning_rate(rule, problem)
        c = curves(rule, problem, lr)
        spreads[problem] = spread(c)
        for backend, style, width in (("numpy", "-", 4.0), ("jax", "--", 2.2), ("torch", ":", 1.6)):
            ax.plot(c[backend], style, linewidth=width, label=backend)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(f"{problem}, lr {lr} (the sweep's best), float64", fontsize=9)
        ax.legend()
    fig.suptitle(f"{rule.name}: NumPy, JAX and torch drawn over each other")
    return Plot(rule.name, _png(fig, inputs(rule)), spreads)


#: the PNG text chunk that holds the digest of what a picture was drawn from (``inputs``)
INPUTS_KEY = "optforge inputs"


def _png(fig, inputs: str) -> bytes:
    import matplotlib
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    # no date is written to a PNG; the version says which renderer a committed picture needs to be redrawn
    metadata = {"Software": f"matplotlib {matplotlib.__version__}", INPUTS_KEY: inputs}
    fig.savefig(buf, format="png", dpi=80, metadata=metadata)
    plt.close(fig)
    return buf.getvalue()


def inputs(rule) -> str:
    """A digest of everything a rule's picture is drawn from: its generated NumPy, JAX and torch modules,
    the runtime they import, this module, and the versions of the libraries that run and draw it. A picture
    is stale when its digest (``INPUTS_KEY``) is not this; the pictures are then drawn again."""
    return _digest(_inputs_text(rule))


def comparison_inputs(rules) -> str:
    """The digest of what ``docs/compare.png`` is drawn from (every rule's NumPy module and the rest)."""
    return _digest("".join(_inputs_text(rule) for rule in rules))


@functools.cache
def _shared_text() -> str:
    import importlib.metadata

    import optforge

    root = pathlib.Path(optforge.__file__).resolve().parent
    texts = [pathlib.Path(__file__).read_text()]
    texts += [path.read_text() for path in sorted((root / "runtime").glob("*.py"))]
    texts += [
        f"{name} {importlib.metadata.version(name)}" for name in ("numpy", "jax", "torch", "matplotlib")
    ]
    return "\n".join(texts)


def _inputs_text(rule) -> str:
    import optforge

    root = pathlib.Path(optforge.__file__).resolve().parent / "generated"
    modules = [(root / backend / f"{rule.module}.py").read_text() for backend in ("numpy", "jax", "torch")]
    return "\n".join([rule.name, *modules, _shared_text()])


def _digest(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def drawn_from(path: pathlib.Path) -> str | None:
    """The digest a committed picture was drawn from (None: none, or no picture)."""
    if not path.exists():
        return None
    from PIL import Image

    return Image.open(path).info.get(INPUTS_KEY)


def draw_comparison(rules) -> bytes:
    """Every optimizer on the same two problems, each at its sweep's best rate (NumPy: the backends'
    curves coincide, each rule's page shows them), as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = ["-", "--", "-.", ":"]
    for ax, problem in zip(axes, STEPS):
        for i, rule in enumerate(rules):
            lr = best_learning_rate(rule, problem)
            ax.plot(numpy_curve(rule, problem, lr), styles[i % len(styles)], label=f"{rule.name} (lr {lr})")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(
            f"{problem}, float64, each at the best of lr {LEARNING_RATES[0]}..{LEARNING_RATES[-1]}",
            fontsize=9,
        )
        ax.legend(fontsize=7)
    fig.suptitle("Every optimizer on the same problems")
    return _png(fig, comparison_inputs(rules))


def comparison_path(root: pathlib.Path) -> pathlib.Path:
    return root / "docs" / "compare.png"


def plot_path(root: pathlib.Path, rule) -> pathlib.Path:
    return root / "docs" / "optimizers" / f"{rule.module}.png"


def write_plots(
    root: pathlib.Path, only: str | None = None, force: bool = False
) -> list[tuple[pathlib.Path, Plot | None, bool]]:
    """Draw each rule's picture (or only one) whose inputs changed (``force``: every one) and write it where
    it differs: (path, plot or None where its inputs are those it was drawn from, written)."""
    from optforge.rules import registry

    rules = list(registry().values())
    out = []
    for rule in rules:
        if only and only not in (rule.name, rule.module):
            continue
        path = plot_path(root, rule)
        if not force and drawn_from(path) == inputs(rule):
            out.append((path, None, False))
            continue
        plot = draw(rule)
        written = not path.exists() or path.read_bytes() != plot.png
        if written:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(plot.png)
        out.append((path, plot, written))
    if not only:
        path = comparison_path(root)
        if not force and drawn_from(path) == comparison_inputs(rules):
            out.append((path, None, False))
            return out
        png = draw_comparison(rules)
        written = not path.exists() or path.read_bytes() != png
        if written:
            path.write_bytes(png)
        out.append((path, Plot("every optimizer", png, {}), written))
    return out
