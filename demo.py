"""`python -m optforge.demo`: train a small network on handwritten digits with every generated optimizer.

The data are scikit-learn's digits (1797 images of 8x8 pixels, shipped inside the scikit-learn wheel: no
download), split once into 1437 training and 360 test images. The network is a multilayer perceptron
64-32-10 (tanh, softmax cross-entropy), written three times: in NumPy with its gradient by hand, in JAX
(`jax.grad`) and in torch (autograd). Every registered rule trains it in each backend from the same initial
weights on the same batches, in float64, so the three backends' losses agree to the last digits: three
gradients written independently and three compiled optimizers checked against each other.

It prints a line per run as it goes, then a table (start and final training loss, test accuracy, and the
largest relative difference between the backends' final losses) and writes a picture of the training
curves. `--epochs`, `--train` and `--out` make it smaller or put the picture elsewhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

import numpy as np

BACKENDS = ("numpy", "jax", "torch")
HIDDEN = 32
BATCH = 64
TEST_SIZE = 360
EPOCHS = 12

# Per optimizer, the learning rate with the lowest training loss (the mean of the last three of the 12
# epochs below, in NumPy) in a sweep of 0.001, 0.003, 0.01, ..., 0.3, 1. The defaults are tuned for other
# work: Keras's Adagrad at 0.001 reaches 38% test accuracy here, NovoGrad's 1.0 diverges. Every registered
# rule runs: one not named here trains with its registry defaults (`rule.configs["default"]`).
LEARNING_RATE = {
    "Adagrad": 0.3,
    "Adamax": 0.1,
    "Nadam": 0.03,
    "NovoGrad": 0.03,
    "NovoGradTF1": 0.03,
    "OptaxAdabelief": 0.03,
    "OptaxAdadelta": 1.0,
    "OptaxAdagrad": 0.3,
    "OptaxAdam": 0.03,
    "OptaxAdafactor": 0.03,
    "OptaxAdamW": 0.03,
    "OptaxAdamax": 0.1,
    "OptaxAdamaxw": 0.1,
    "OptaxAdan": 0.03,
    "OptaxAmsgrad": 0.1,
    "OptaxFromage": 0.03,
    "OptaxLamb": 0.01,
    "OptaxLars": 1.0,
    "OptaxLion": 0.01,
    "OptaxMuon": 0.03,
    "OptaxNadam": 0.03,
    "OptaxNadamw": 0.03,
    "OptaxNovoGrad": 0.1,
    "OptaxPolyakSgd": 1.0,
    "OptaxRadam": 0.1,
    "OptaxRmsprop": 0.03,
    "OptaxRprop": 0.1,
    "OptaxSgd": 1.0,
    "OptaxSignSgd": 0.01,
    "OptaxSm3": 0.3,
    "OptaxYogi": 0.03,
    "SGD": 1.0,
    "TorchASGD": 1.0,
    "TorchAdadelta": 1.0,
    "TorchAdafactor": 0.1,
    "TorchAdagrad": 0.3,
    "TorchAdam": 0.03,
    "TorchAdamW": 0.03,
    "TorchAdamax": 0.1,
    "TorchMuon": 0.03,
    "TorchNAdam": 0.03,
    "TorchRAdam": 0.1,
    "TorchRMSprop": 0.03,
    "TorchRprop": 0.1,
    "TorchSGD": 1.0,
}


@dataclasses.dataclass(frozen=True)
class Task:
    """The data, the batches of every epoch and the initial weights: the same for every run."""

    x_train: np.ndarray  # (n, 64) float64 in [0, 1]
    y_train: np.ndarray  # (n,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    epochs: list[list[np.ndarray]]  # per epoch, the indices of each batch
    init: list[np.ndarray]  # W1 (64, 32), b1 (32,), W2 (32, 10), b2 (10,)


@dataclasses.dataclass(frozen=True)
class Run:
    rule: str
    backend: str
    loss: list[float]  # the loss on the whole training set before the first step and after each epoch
    accuracy: list[float]  # the test accuracy, likewise
    seconds: float


def make_task(*, epochs: int = EPOCHS, train: int | None = None, seed: int = 0) -> Task:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.data.astype(np.float64) / 16.0
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    test, fit = order[:TEST_SIZE], order[TEST_SIZE:]
    if train is not None:
        if not BATCH <= train <= len(fit):
            raise ValueError(f"`train` must be in [{BATCH}, {len(fit)}]. Received: train={train}")
        fit = fit[:train]
    n = len(fit)
    init = []
    for fan_in, fan_out in ((64, HIDDEN), (HIDDEN, 10)):
        limit = np.sqrt(6.0 / (fan_in + fan_out))  # Glorot uniform
        init += [rng.uniform(-limit, limit, size=(fan_in, fan_out)), np.zeros(fan_out)]
    # Equal batches (the last partial one is dropped): one shape, so JAX compiles the step once.
    batches = [
        [perm[i : i + BATCH] for i in range(0, n - BATCH + 1, BATCH)]
        for perm in (rng.permutation(n) for _ in range(epochs))
    ]
    return Task(x[fit], y[fit], x[test], y[test], batches, init)


def hyperparameters(rule) -> dict:
    cfg = dict(rule.configs["default"])
    if rule.name in LEARNING_RATE:
        cfg["learning_rate"] = LEARNING_RATE[rule.name]
    return cfg


# -- the network, three times ------------------------------------------------------------------------


def _numpy_loss_and_grads(params, x, y):
    """The batch's mean cross-entropy, and its gradient by backpropagation by hand: d(mean
    cross-entropy)/dz = (softmax(z) - onehot(y)) / n, tanh' = 1 - h^2."""
    w1, b1, w2, b2 = params
    h = np.tanh(x @ w1 + b1)
    z = h @ w2 + b2
    top = z.max(axis=1, keepdims=True)
    e = np.exp(z - top)
    total = e.sum(axis=1, keepdims=True)
    loss = float(np.mean(top[:, 0] + np.log(total[:, 0]) - z[np.arange(len(y)), y]))
    dz = e / total
    dz[np.arange(len(y)), y] -= 1.0
    dz /= len(y)
    dh = (dz @ w2.T) * (1.0 - h * h)
    return loss, [x.T @ dh, dh.sum(axis=0), h.T @ dz, dz.sum(axis=0)]


def _numpy_eval(params, x, y):
    w1, b1, w2, b2 = params
    z = np.tanh(x @ w1 + b1) @ w2 + b2
    top = z.max(axis=1, keepdims=True)
    loss = np.mean(top[:, 0] + np.log(np.exp(z - top).sum(axis=1)) - z[np.arange(len(y)), y])
    return float(loss), int(np.sum(z.argmax(axis=1) == y)) / len(y)


def train_numpy(rule, task: Task, cfg: dict):
    import optforge.generated.numpy as gen

    opt = getattr(gen, rule.name)(**cfg)
    params = [p.copy() for p in task.init]
    state = opt.init(params)
    yield _numpy_eval(params, task.x_train, task.y_train)[0], _numpy_eval(params, task.x_test, task.y_test)[1]
    for batches in task.epochs:
        for idx in batches:
            loss, grads = _numpy_loss_and_grads(params, task.x_train[idx], task.y_train[idx])
            params, state = opt.step(params, grads, state, **({"value": loss} if rule.reads_loss else {}))
        yield (
            _numpy_eval(params, task.x_train, task.y_train)[0],
            _numpy_eval(params, task.x_test, task.y_test)[1],
        )


def train_jax(rule, task: Task, cfg: dict):
    import jax
    import jax.numpy as jnp
    import optax

    import optforge.generated.jax as gen

    def loss_fn(params, x, y):
        w1, b1, w2, b2 = params
        z = jnp.tanh(x @ w1 + b1) @ w2 + b2
        return jnp.mean(jax.nn.logsumexp(z, axis=1) - jnp.take_along_axis(z, y[:, None], axis=1)[:, 0])

    def correct(params, x, y):
        w1, b1, w2, b2 = params
        return jnp.sum(jnp.argmax(jnp.tanh(x @ w1 + b1) @ w2 + b2, axis=1) == y)

    tx = getattr(gen, rule.module)(**cfg)
    with_loss = rule.reads_loss  # Polyak's step size: given the batch's loss

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params, **({"value": loss} if with_loss else {}))
        return optax.apply_updates(params, updates), opt_state

    evaluate = jax.jit(lambda p: (loss_fn(p, xtr, ytr), correct(p, xte, yte)))
    xtr, ytr, xte, yte = (jnp.asarray(a) for a in (task.x_train, task.y_train, task.x_test, task.y_test))
    params = [jnp.asarray(p) for p in task.init]
    opt_state = tx.init(params)
    loss, right = evaluate(params)
    yield float(loss), int(right) / len(yte)
    for batches in task.epochs:
        for idx in batches:
            params, opt_state = step(params, opt_state, xtr[idx], ytr[idx])
        loss, right = evaluate(params)
        yield float(loss), int(right) / len(yte)


def train_torch(rule, task: Task, cfg: dict):
    import torch

    import optforge.generated.torch as gen

    def logits(params, x):
        w1, b1, w2, b2 = params
        return torch.tanh(x @ w1 + b1) @ w2 + b2

    def evaluate(params):
        with torch.no_grad():
            loss = torch.nn.functional.cross_entropy(logits(params, xtr), ytr)
            right = (logits(params, xte).argmax(dim=1) == yte).sum()
        return loss.item(), right.item() / len(yte)

    xtr, ytr, xte, yte = (torch.from_numpy(a) for a in (task.x_train, task.y_train, task.x_test, task.y_test))
    params = [torch.tensor(p, requires_grad=True) for p in task.init]
    kw = {("lr" if k == "learning_rate" else k): v for k, v in cfg.items()}
    opt = getattr(gen, rule.name)(params, **kw)
    yield evaluate(params)
    for batches in task.epochs:
        for idx in batches:
            i = torch.from_numpy(idx)

            def closure():
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(logits(params, xtr[i]), ytr[i])
                loss.backward()
                return loss

            opt.step(closure)
        yield evaluate(params)


TRAIN = {"numpy": train_numpy, "jax": train_jax, "torch": train_torch}


def train(rule, backend: str, task: Task) -> Run:
    start = time.perf_counter()
    losses, accuracies = [], []
    for loss, acc in TRAIN[backend](rule, task, hyperparameters(rule)):
        losses.append(loss)
        accuracies.append(acc)
    return Run(rule.name, backend, losses, accuracies, time.perf_counter() - start)


# -- what the user sees ------------------------------------------------------------------------------


def agreement(runs: dict[str, Run]) -> float:
    """The largest relative difference between the backends' final training losses."""
    final = [r.loss[-1] for r in runs.values()]
    return (max(final) - min(final)) / abs(min(final))


def table(results: dict[str, dict[str, Run]], rules: dict) -> str:
    head = (
        f"{'optimizer':<14} {'lr':>7} {'start loss':>10}  {'final training loss':^32}  "
        f"{'test accuracy':^22}  {'backends':>8}"
    )
    sub = (
        f"{'':<14} {'':>7} {'':>10}  "
        + " ".join(f"{b:>10}" for b in BACKENDS)
        + "  "
        + " ".join(f"{b:>6}" for b in BACKENDS)
        + f"  {'differ by':>8}"
    )
    lines = [head, sub, "-" * len(sub)]
    for name, runs in results.items():
        lr = hyperparameters(rules[name]).get("learning_rate")
        first = runs["numpy"]
        lines.append(
            f"{name:<14} {'' if lr is None else f'{lr:g}':>7} {first.loss[0]:>10.4f}  "
            + " ".join(f"{runs[b].loss[-1]:>10.6f}" for b in BACKENDS)
            + "  "
            + " ".join(f"{runs[b].accuracy[-1]:>6.1%}" for b in BACKENDS)
            + f"  {agreement(runs):>8.1e}"
        )
    return "\n".join(lines)


def plot(results: dict[str, dict[str, Run]], path: pathlib.Path, task: Task) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"numpy": ("-", 3.0), "jax": ("--", 1.6), "torch": (":", 1.6)}
    for k, (name, runs) in enumerate(results.items()):
        color = f"C{k % 10}"
        for backend, run in runs.items():
            style, width = styles[backend]
            label = name if backend == "numpy" else None
            left.plot(run.loss, style, color=color, linewidth=width, label=label)
            epochs = range(1, len(run.accuracy))  # before training (about 10%) would flatten the rest
            right.plot(epochs, [100 * a for a in run.accuracy[1:]], style, color=color, linewidth=width)
    left.set_yscale("log")
    left.set_xlabel("epoch")
    left.set_ylabel("training loss (cross-entropy)")
    right.set_xlabel("epoch")
    right.set_ylabel("test accuracy (%)")
    right.set_ylim(top=100)
    left.legend(fontsize=8)
    fig.suptitle(
        f"digits, MLP 64-{HIDDEN}-10, {len(task.y_train)} training images, batches of {BATCH}, float64: "
        "NumPy (solid), JAX (dashed), torch (dotted)",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m optforge.demo",
        description="Train an MLP on scikit-learn's digits with every generated optimizer in NumPy, JAX, torch.",
    )
    parser.add_argument("--epochs", type=int, default=EPOCHS, help=f"passes over the data (default {EPOCHS})")
    parser.add_argument("--train", type=int, help="use only this many training images (default: all 1437)")
    parser.add_argument(
        "--out", default="optforge-demo.png", help="where the picture goes (default: ./optforge-demo.png)"
    )
    parser.add_argument("--json", help="also write every run's curves and times to this file")
    parser.add_argument(
        "--rules", nargs="+", metavar="RULE", help="only these optimizers (names or modules; default: all)"
    )
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1. Received: {args.epochs}")
    start = time.perf_counter()
    from optforge.rules import select

    try:  # before JAX and torch are imported: a bad size or name is said at once
        task = make_task(epochs=args.epochs, train=args.train)
        rules = {rule.name: rule for rule in select(args.rules)}
    except ValueError as exc:
        parser.error(str(exc))
    import jax
    import torch

    jax.config.update("jax_enable_x64", True)
    # A network this small gains nothing from a second thread, and on a busy machine torch's OpenMP threads
    # wait for each other: one optimizer's 264 steps took 47 s with 2 threads, 4 s with one (2 loaded cores).
    torch.set_num_threads(1)

    steps = len(task.epochs[0])
    print(
        f"Handwritten digits (scikit-learn, 8x8 pixels): {len(task.y_train)} training and {len(task.y_test)} "
        f"test images.\nA multilayer perceptron 64-{HIDDEN}-10 (tanh, softmax cross-entropy), {args.epochs} "
        f"epochs of {steps} batches of {BATCH}, float64;\nthe same initial weights and batches in every "
        f"backend; gradients by hand (NumPy), jax.grad (JAX), autograd (torch).\n"
        f"{len(rules)} optimizers x {len(BACKENDS)} backends:\n",
        flush=True,
    )
    results: dict[str, dict[str, Run]] = {}
    total, done = len(rules) * len(BACKENDS), 0
    for rule in rules.values():
        results[rule.name] = {}
        for backend in BACKENDS:
            run = train(rule, backend, task)
            results[rule.name][backend] = run
            done += 1
            print(
                f"[{done:>2}/{total}] {rule.name:<14} "
                f"{backend:<6} loss {run.loss[0]:.4f} -> {run.loss[-1]:.4f}, test accuracy "
                f"{run.accuracy[-1]:6.1%}  ({run.seconds:.1f} s)",
                flush=True,
            )
    print()
    print(table(results, rules))
    worst = max(agreement(runs) for runs in results.values())
    print(
        f"\nThe backends' final losses differ by at most {worst:.1e} (relative) after {args.epochs * steps} "
        f"steps:\nthe same rules compiled three times, on gradients computed three ways."
    )
    if args.json:
        path = pathlib.Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        runs = [dataclasses.asdict(run) for runs in results.values() for run in runs.values()]
        path.write_text(
            json.dumps({"hyperparameters": {n: hyperparameters(r) for n, r in rules.items()}, "runs": runs})
        )
        print(f"Results: {path.resolve()}")
    out = pathlib.Path(args.out).resolve()
    plot(results, out, task)
    print(f"Training curves: {out}")
    print(f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
