"""Keras 3's shared options as stages around a rule, for torch (``options.py`` says what they do).

``Call`` is one call of ``step()`` for one parameter group: the runtime's ``RuleOptimizer.step`` makes it
and calls the generated ``_update`` (the rule's own code) on update calls only; the rule's loop over the
tensors is ``for w, g, state in call.tensors(case, values)``, which runs the prologue before it hands out
each tensor and the epilogue after the rule updated it. Every element-wise operation writes into scratch
buffers kept between steps (no allocation in proportion to the parameters); the operations, their order
and their dtype are those the options' equations printed inline did, so the results are the same bit for
bit. With ``fused=True`` the tensors the kernels take go to them, options and all, after the others; with
``fused="triton"`` (or ``fused=True`` on CUDA parameters) a group whose every parameter the Triton kernels
take goes to them, the whole step in a few launches (``triton_support``).
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from . import common, fused_support, torch_support
from .options import KERAS_OPTIONS, Options, Step, kernel_values

#: what the stages keep per parameter (the rule's states are the others)
STAGE_STATES = frozenset({"grad_accumulator", "ema"})


class Call:
    """One call of ``step()`` for one parameter group (see the module docstring)."""

    def __init__(
        self, optimizer: Any, group: dict[str, Any], params: list[torch.Tensor], loss: Any = None
    ) -> None:
        self.loss = loss  # the objective's value, where the rule reads it (``loss``)
        n = group.get("step", 0)  # earlier calls
        group["step"] = n + 1
        self.optimizer = optimizer
        self.group = group
        # torch.optim's maximize: the gradients' signs flipped first (by the stages, unless the rule does)
        self.maximize = group.get("maximize", False) and not optimizer.rule_maximizes
        self.options = o = Options.of(group, optimizer.options)
        self.step = step = Step.of(n, o)
        self.lr = common.learning_rate_at(group["lr"], n)
        wanted = list(optimizer._states(group))
        self.element = tuple(name for name, scope, _ in wanted if scope == "element")
        self.params = list(optimizer._tensors(params, group, wanted))
        # the global norm of the gradients as the prologue makes them: a pass over all tensors, made when
        # the plain or Numba path first needs it (the Triton kernels compute it themselves)
        self.global_sumsq_g: Any = 0.0
        self._global_pass = o.global_clipnorm is not None and step.is_update
        #: the parameters are DTensors: a reduction over one tensor adds its shards', so each pass over the
        #: tensors all-reduces its tensors' reductions together (the rule's, ``torch_support.all_reduced``;
        #: clipnorm's, before the first tensor is handed out), one collective instead of one per tensor
        self.distributed = any(torch_support.is_distributed(w) for w, _ in self.params)
        self._clip_pass = o.clipnorm is not None and step.is_update and self.distributed
        self._clip_sums: dict | None = None
        self._shared = False  # global_clipnorm's norm is over several groups (share_global_norm)
        #: the parameter groups stepping together: a rule's reductions over all tensors span them all
        #: (``torch_support.over_groups``), where Triton's kernels would sum over this group's launch only
        self.groups = 1

    def _global_norm(self) -> None:
        """The pass over all tensors for ``global_clipnorm``, once per call, before the first tensor is
        handed out."""
        if not self._global_pass:
            return
        self._global_pass = False
        self.global_sumsq_g = None  # being computed: the prologue stops before the global clipping
        self.global_sumsq_g = torch_support.sum_over_tensors(list(self._sums_of_squares().values()))

    def _clip_norms(self) -> None:
        """For DTensors, the pass over all tensors for ``clipnorm``: each tensor's sum of squares of its
        gradient as the prologue makes it before clipping, all-reduced together, once per call."""
        if not self._clip_pass:
            return
        self._clip_pass = False
        sums = self._sums_of_squares(clip=False)
        self._clip_sums = torch_support.all_reduced({w: (s,) for w, s in sums.items()})

    def _sums_of_squares(self, clip: bool = True) -> dict[torch.Tensor, torch.Tensor]:
        """Each parameter's sum of squares of its gradient as the prologue makes it (peeking: nothing is
        written; ``clip``: False stops before the clipping), in the parameters' order."""
        sums = {}
        for w, g, state in self._each():
            g = self.prologue(w, g, state, peek=True, clip=clip)
            _, _, s2 = self.scratch(w, g, state.get("grad_accumulator"))
            torch.pow(g, 2, out=s2)
            sums[w] = torch.sum(s2)
        return sums

    # -- what the rule reads -----------------------------------------------------------------

    @property
    def is_update(self) -> bool:
        return self.step.is_update

    @property
    def n(self) -> int:
        """The rule's ``n``: the updates before this one (``t = n + 1``)."""
        return self.step.updates

    def tensors(self, case: int, values: dict[str, Any]) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
        """Each parameter of the plain path, its gradient as the prologue leaves it (a scratch buffer, or
        the gradient itself when no option changes it) and its state; after the rule has updated it, the
        epilogue. Then the parameters the fused path takes (``case``'s kernel, with the rule's once-per-step
        ``values``), in one kernel call."""
        opt = self.optimizer
        done: set[int] = set()  # the tensors Triton's kernels updated (by id)
        if opt.fused is not False and not self.maximize:
            done = self._triton(case, values)
            if len(done) == len(self.params):
                return
        self._clip_norms()
        self._global_norm()
        fused = opt._fused is not None and not self.maximize  # maximize: the plain path flips the signs
        kernel = fused_support.kernel(opt._fused, case) if fused else None
        names, scalars = fused_support.takes(kernel) if fused else ((), ())
        element = set(self.element)
        work = []
        for w, g, state in self._each():  # maximize: not fused, so the kernels never see a flipped gradient
            if done and id(w) in done:
                continue
            if fused:
                states = [state.get(name) for name in names]
                if torch_support.fusable(
                    w, g, *[s for s, name in zip(states, names) if name in element]
                ) and common.kept(
                    w.shape, kernel.takes, self.group
                ):  # a tensor whose step the kernels compute
                    work.append((w, g, *states))
                    continue
            g = self.prologue(w, g, state)
            if self.step.is_update:
                if self._gathers(w):  # the rule's step on the whole tensors, each shard written back
                    whole = self._whole_state(state)
                    w_whole = torch_support.whole(w)
                    yield w_whole, torch_support.whole(g), whole
                    torch_support.write_shard(w, w_whole)
                    for name, value in whole.items():
                        torch_support.write_shard(state[name], value)
                else:
                    yield w, g, state
            self.epilogue(w, state)
        if work:
            values = kernel_values(scalars, values, self.options, self.step, self.lr, self.global_sumsq_g)
            fused_support.run(kernel, work, torch_support.plain(values))

    def peek(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
        """Each parameter (the fused path's too), its gradient as the prologue makes it, and its state, for
        a pass of the rule over all tensors before its update: nothing is written."""
        self._clip_norms()
        self._global_norm()
        for w, g, state in self._each():
            g = self.prologue(w, g, state, peek=True)
            if self._gathers(w):
                yield torch_support.whole(w), torch_support.whole(g), self._whole_state(state)
            else:
                yield w, g, state

    def _gathers(self, w: torch.Tensor) -> bool:
        """Whether the rule's step takes ``w`` whole: a DTensor, for a rule that needs each tensor whole
        (``RuleOptimizer.whole_tensors``: an axis reduction, a matrix product). Its gradient (after the
        options' stages, which reduce over the shards) and state are gathered with it: one all-gather each
        of a sharded one, the rule's own reductions then on whole tensors (no collective)."""
        return bool(self.optimizer.whole_tensors) and self.distributed and torch_support.is_distributed(w)

    @staticmethod
    def _whole_state(state: dict) -> dict:
        """The rule's own states of a parameter, whole (``torch_support.whole``); the stages' (the gradient
        accumulator, the EMA) stay sharded: the stages run on the shards."""
        return {name: torch_support.whole(s) for name, s in state.items() if name not in STAGE_STATES}

    def _each(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
        """Each parameter, the gradient the stages start from (``gradient``) and its state; under
        torch.compile, their 0-d tensors as views of one element (``torch_support.traceable``)."""
        compiling = torch.compiler.is_compiling()
        for w, state in self.params:
            g = self.gradient(w)
            yield torch_support.traceable(w, g, state) if compiling else (w, g, state)

    def _triton(self, case: int, values: dict[str, Any]) -> set[int]:
        """The call on the Triton kernels, options and all, for the tensors they take (``fused="triton"``;
        ``fused=None`` or True on CUDA parameters; see ``triton_support.plan``): every parameter of the group,
        or those whose step is element-wise (a rule that reads the shape: the kernels' ``takes``) where
        the step does not reduce over all tensors. Returns the ids of the tensors updated: none where the
        kernels take none, and in a step that torch.compile traces (the tables' addresses are the host's)."""
        opt = self.optimizer
        if not self.params or torch.compiler.is_compiling():  # a traced step: inductor fuses it
            return set()
        if self._shared:  # the global norm is over several groups: the kernels would take this one's
            return set()
        if opt.fused != "triton" and not any(w.is_cuda for w, _ in self.params):
            return set()
        kernel = opt._triton_case(case)
        if kernel is None:
            return set()
        from . import triton_support  # Triton is imported where a step may take it, not with torch

        names, scalars = fused_support.takes(kernel)
        taken = [(w, state) for w, state in self.params if common.kept(w.shape, kernel.takes, self.group)]
        if not taken:
            return set()
        work = [(w, w.grad, *map(state.get, names)) for w, state in taken]
        values = torch_support.plain(kernel_values(scalars, values, self.options, self.step, self.lr, 0.0))
        partial = len(taken) < len(self.params) or self.groups > 1  # the kernels' sums would miss tensors
        groups = triton_support.plan(kernel, work, values, partial=partial)
        if groups is None:
            return set()
        triton_support.run(kernel, work, values, groups=groups)
        return {id(w) for w, _ in taken}

    def skip(self, case: int) -> None:
        """A call that only accumulates: the stages without the rule (its fused kernel: with the rule's
        hyperparameters, the rule's other values not read)."""
        rule = {k: v for k, v in self.group.items() if k not in KERAS_OPTIONS and k != "lr"}
        for _ in self.tensors(case, rule):
            pass

    # -- the stages ----------------------------------------------------------------------------

    def gradient(self, w: torch.Tensor) -> torch.Tensor:
        """The gradient the stages start from: ``w.grad``, at least float32, its signs flipped where the
        group maximizes."""
        g = torch_support.upcast(w.grad)
        return torch.neg(g) if self.maximize else g

    def scratch(self, w: torch.Tensor, *tensors: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        return torch_support.scratch(self.optimizer._stage_scratch, 3, w, *tensors)

    def prologue(
        self, w: torch.Tensor, g: torch.Tensor, state: dict, peek: bool = False, clip: bool = True
    ) -> torch.Tensor:
        """The gradient the rule reads (``peek``: without touching the accumulator, for a pass over all
        tensors; ``clip``: False stops before the clipping); on an update, the decoupled weight decay too
        (not when peeking)."""
        o, update = self.options, self.step.is_update
        if not o.touches_gradient and (peek or o.weight_decay is None or not update):
            return g
        acc = state.get("grad_accumulator")
        if peek:
            s0, s1, _ = self.scratch(w, g, acc)
        else:
            s0, s1, _ = self.scratch(w, g, *[state[name] for name in self.element])
        # loss scaling
        if o.loss_scale_factor is not None:
            g = torch.div(g, o.loss_scale_factor, out=s0)
        # gradient accumulation
        steps = o.gradient_accumulation_steps
        if steps is not None:
            if peek:
                acc = torch.add(g, acc, out=s1)
            else:
                acc.add_(g)
            if update:
                g = torch.div(acc, steps, out=s0)
                if not peek:
                    acc.fill_(0)
        if not update or not clip:
            return g
        # clipping
        if o.clipnorm is not None:
            if self._clip_sums is not None:  # DTensors: every tensor's, all-reduced together
                (sumsq_g,) = self._clip_sums[w]
            elif peek:
                sumsq_g = torch.sum(g**2)
            else:
                torch.pow(g, 2, out=s1)
                sumsq_g = torch.sum(s1)
            g = torch.mul(g, o.clipnorm / torch.clamp(torch.sqrt(sumsq_g), min=o.clipnorm), out=s0)
        if o.global_clipnorm is not None and self.global_sumsq_g is not None:
            c = o.global_clipnorm
            g = torch.mul(g, c / torch.clamp(torch.sqrt(self.global_sumsq_g), min=c), out=s0)
        if o.clipvalue is not None:
            c = o.clipvalue
            g = torch.clamp(g, -c, c, out=s0) if g.dtype == s0.dtype else s0.copy_(torch.clamp(g, -c, c))
        # decoupled weight decay
        if o.weight_decay is not None and not peek:
            w.add_(w, alpha=-(self.lr * o.weight_decay))
        return g

    def epilogue(self, w: torch.Tensor, state: dict) -> None:
        """The EMA of the weights, and its overwrite."""
        o = self.options
        if not o.use_ema:
            return
        ema, mu = state["ema"], self.step.ema_mu
        _, s1, _ = self.scratch(w, *[state[name] for name in self.element])
        torch.mul(ema, mu, out=s1)
        torch.add(s1, w, alpha=1 - mu, out=ema)
        if self.step.overwrite:
            w.copy_(ema)


def share_global_norm(calls: list[Call]) -> None:
    """``global_clipnorm`` in several parameter groups: the norm is over the gradients of every group that
    clips by it (as NumPy's and JAX's is over every tensor, and ``torch.nn.utils.clip_grad_norm_`` over
    the parameters it is given), each group clipping by its own value. Those groups' steps take the plain or
    Numba path (Triton's kernels would compute their own group's norm). One group: nothing to do."""
    clipping = [c for c in calls if c._global_pass]
    if len(clipping) < 2:
        return
    for c in clipping:
        c.global_sumsq_g = None  # being computed: the prologue stops before the global clipping
    total = torch_support.sum_over_tensors([s for c in clipping for s in c._sums_of_squares().values()])
    for c in clipping:
        c._global_pass, c.global_sumsq_g, c._shared = False, total, True
