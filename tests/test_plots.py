"""The committed pictures (docs/optimizers/*.png) are what `optforge plots` draws now, pixel for pixel."""

from __future__ import annotations

import io
import pathlib
import warnings

import numpy as np
import pytest
from cases import RULES

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"), dtype=np.int16)


def _assert_is_committed(path: pathlib.Path, draw, command: str, tmp_path) -> None:
    """The picture ``draw()`` makes is the committed one at ``path``, pixel for pixel."""
    import matplotlib
    from PIL import Image

    assert path.exists(), f"there is no picture at {path}; run `{command}`"
    committed = path.read_bytes()
    drawn_by = Image.open(io.BytesIO(committed)).info.get("Software")
    ours = f"matplotlib {matplotlib.__version__}"
    assert drawn_by == ours, (
        f"{path.name} was drawn by {drawn_by!r}, this is {ours!r}: the pixels of text differ between "
        f"versions; install the tested one (pip install -c constraints.txt) and run `optforge plots`"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the command prints no warning (torch's requires_grad one was)
        fresh = draw()
    a, b = _pixels(committed), _pixels(fresh)
    assert a.shape == b.shape, f"{path.name}: expected {b.shape} pixels as drawn now; committed {a.shape}"
    differ = np.any(a != b, axis=-1)
    if differ.any():
        (tmp_path / path.name).write_bytes(fresh)
        rows, cols = np.nonzero(differ)
        pytest.fail(
            f"{path} is stale: {int(differ.sum())} pixels differ from the picture drawn now (rows "
            f"{rows.min()}..{rows.max()}, columns {cols.min()}..{cols.max()}; drawn now: {tmp_path / path.name}); "
            f"run `{command}` and commit it"
        )


@pytest.mark.parametrize("rule", list(RULES.values()), ids=list(RULES))
def test_committed_plot_was_drawn_from_the_rules_modules_as_they_are(rule):
    """Each picture carries the digest of what it was drawn from (the rule's generated modules, the runtime,
    the plotting code, the libraries' versions): a change of any of them makes it stale."""
    from optforge.documentation.plots import drawn_from, inputs, plot_path

    path = plot_path(ROOT, rule)
    assert path.exists(), f"there is no picture at {path}; run `optforge plots --rule {rule.module}`"
    assert drawn_from(path) == inputs(rule), (
        f"{path} is stale: drawn from other inputs than the rule's generated modules, the runtime and the"
        f" libraries as they are; run `optforge plots --rule {rule.module}` and commit it"
    )


def test_committed_plot_is_what_the_plots_command_draws(tmp_path):
    """The command draws the committed pixels (for the first rule: the digest above stands for the drawing
    of the others), and leaves a picture whose inputs are unchanged as it is."""
    from optforge.documentation.plots import plot_path, write_plots

    rule = next(iter(RULES.values()))
    out = tmp_path / "out"

    def command() -> bytes:
        [(path, plot, written)] = write_plots(out, only=rule.module)
        assert plot is not None and written and path == plot_path(out, rule)
        return path.read_bytes()

    _assert_is_committed(plot_path(ROOT, rule), command, f"optforge plots --rule {rule.module}", tmp_path)
    assert write_plots(out, only=rule.module) == [(plot_path(out, rule), None, False)]


def test_the_comparison_of_every_optimizer_was_drawn_from_the_rules_as_they_are(tmp_path):
    """docs/compare.png: every rule of the registry on the same problems, each at its sweep's best rate,
    drawn from the inputs as they are (its drawing, on two rules: a picture with their digest)."""
    from PIL import Image

    from optforge.documentation.plots import comparison_inputs, comparison_path, draw_comparison, drawn_from

    path = comparison_path(ROOT)
    assert drawn_from(path) == comparison_inputs(list(RULES.values())), (
        f"{path} is stale: drawn from other inputs than the rules' generated modules, the runtime and the"
        " libraries as they are; run `optforge plots` and commit it"
    )
    two = list(RULES.values())[:2]
    (tmp_path / "two.png").write_bytes(draw_comparison(two))
    assert drawn_from(tmp_path / "two.png") == comparison_inputs(two)
    assert Image.open(tmp_path / "two.png").size == Image.open(path).size


@pytest.mark.parametrize("problem", ["logistic", "rosenbrock"])
def test_the_sweep_keeps_the_stable_rate_that_ends_lowest(problem):
    """The choice checked by hand on one rule: every rate of the sweep run, moved in its start, and the
    chosen one the lowest end among the runs that the move leaves within a millionth."""
    from optforge.documentation.plots import LEARNING_RATES, NUDGE, STABLE, best_learning_rate, numpy_curve

    rule = next(iter(RULES.values()))
    ends = {lr: numpy_curve(rule, problem, lr)[-1] for lr in LEARNING_RATES}
    moved = {lr: numpy_curve(rule, problem, lr, nudge=NUDGE)[-1] for lr in LEARNING_RATES}
    stable = {lr: e for lr, e in ends.items() if np.isfinite(e) and abs(moved[lr] - e) <= STABLE * abs(e)}
    best = best_learning_rate(rule, problem)
    assert best in stable and all(stable[best] <= v for v in stable.values()), (best, ends, moved)
