"""Run-time support for generated torch optimizers: the precision policy and parameter checks."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import torch

from . import common, fused_support, options


def state_dtype(w: torch.Tensor, chosen: Any = None) -> torch.dtype:
    """The dtype of a parameter's state: ``chosen``, or at least float32 (half/bfloat16 params keep float32 state)."""
    return chosen if chosen is not None else torch.promote_types(w.dtype, torch.float32)


def upcast(g: torch.Tensor) -> torch.Tensor:
    """The gradient in at least float32 (no copy for float32 and float64)."""
    if g.dtype is torch.float32 or g.dtype is torch.float64:
        return g  # the common case, without a call into torch
    return g.to(torch.promote_types(g.dtype, torch.float32))


def check_floating(w: torch.Tensor, optimizer: str) -> None:
    if not w.is_floating_point():
        raise TypeError(
            f"{optimizer} updates real floating-point parameters. Received: a {w.dtype} parameter of shape {tuple(w.shape)}"
        )


def check_param(w: torch.Tensor, optimizer: str) -> None:
    check_floating(w, optimizer)
    grad = w.grad
    if grad.is_sparse:
        raise RuntimeError(f"{optimizer} does not support sparse gradients")
    if grad.shape != w.shape:
        raise ValueError(
            f"the gradient of a parameter of shape {tuple(w.shape)} has shape {tuple(w.grad.shape)}"
        )


def check_state_dtype(chosen: Any, name: str = "state_dtype") -> Any:
    if chosen is not None and not (isinstance(chosen, torch.dtype) and chosen.is_floating_point):
        raise TypeError(f"`{name}` must be None or a floating torch.dtype. Received: {name}={chosen!r}")
    return chosen


_FUSED = (torch.float32, torch.float64)
#: the tensors the Numba and Triton kernels index: not a subclass (a DTensor, whose shards are on other
#: processes)
PLAIN = (torch.Tensor, torch.nn.Parameter)


def check_fused(fused: Any) -> bool | str | None:
    """torch's ``fused``: None (Triton's kernels on CUDA parameters, where Triton is installed), True (and
    Numba's on CPU parameters), ``"triton"`` (Triton's kernels wherever they run: CUDA, or the CPU in
    Triton's interpreter) or False (torch operations only)."""
    if fused is None or isinstance(fused, bool) or (isinstance(fused, str) and fused == "triton"):
        return fused
    raise TypeError(
        f"`fused` must be None, True, False or 'triton'. Received: fused={fused!r} ({type(fused).__name__})"
    )


def _triton_load(module: str, rule: str) -> Any:
    try:
        from . import triton_support  # imports Triton
    except ImportError:
        raise ImportError(
            f"{rule}'s GPU kernels are compiled by Triton, which is not installed. Install it with:"
            " pip install 'optforge[triton]', or use fused=False"
        ) from None
    return triton_support.load(module, rule)


def fusable(w: torch.Tensor, g: torch.Tensor, *states: torch.Tensor | None) -> bool:
    """Whether the fused path takes this parameter: CPU, contiguous, one dtype (float32 or float64) and one
    size (the kernels index the arrays by address, unchecked)."""
    if type(w) not in PLAIN or type(g) not in PLAIN:  # a DTensor's reductions span its other shards
        return False
    dtype = w.dtype
    if dtype not in _FUSED or not w.is_cpu or not w.is_contiguous():
        return False
    size = w.numel()
    if g.dtype is not dtype or not g.is_cpu or not g.is_contiguous() or g.numel() != size:
        return False
    for s in states:
        if s is not None and (
            s.dtype is not dtype or not s.is_cpu or not s.is_contiguous() or s.numel() != size
        ):
            return False
    return True


def over_groups(steps: list) -> None:
    """The steps of the parameter groups whose rule reduces over all tensors (``_update`` a generator), side
    by side: at each pass over the tensors each group's step yields its part of each reduction (``{name:
    ("sum" | "max", value)}``) and is sent back the whole, every group's parts combined in the groups' order
    (a reduction over all tensors spans every group, as NumPy's and JAX's span every tensor). One group:
    its own parts, unchanged."""
    pending = _advanced([(run, None) for run in steps], None)
    while pending:
        totals: dict[str, Any] = {}
        for _, parts in pending:
            for name, (kind, value) in parts.items():
                if name not in totals:
                    totals[name] = value
                elif kind == "sum":
                    totals[name] = totals[name] + value
                else:
                    totals[name] = torch.maximum(torch.as_tensor(totals[name]), torch.as_tensor(value))
        pending = _advanced(pending, totals)


def _advanced(pending: list, value: Any) -> list:
    """Each step sent ``value``: (step, what it yields next) for those that have not finished."""
    out = []
    for run, _ in pending:
        try:
            out.append((run, run.send(value)))
        except StopIteration:
            pass
    return out


def global_value(value: Any) -> torch.Tensor:
    """A global state that the step computes from tensors (a reduction over all tensors), as a 0-d tensor:
    a Python number (its initial value, or a checkpoint's) becomes one, in float64, the precision of global
    state (so ``torch.maximum`` and the other tensor functions take it)."""
    return value if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=torch.float64)


def plain(scalars: dict[str, Any]) -> dict[str, Any]:
    """The values of 0-d tensors (a reduction over all tensors) as Python numbers."""
    return {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in scalars.items()}


def scratch(
    cache: dict, count: int, w: torch.Tensor, *tensors: torch.Tensor | None, scope: str = "element"
) -> tuple[torch.Tensor, ...]:
    """``count`` scratch buffers shaped like ``w`` (``scope``: or with axes reduced to length 1, a row's,
    ``common.state_shape``; buffers apart) on its device, in the dtype of its element-wise maths (the
    widest of ``w`` and ``tensors``), kept between steps (``common.scratch_views``)."""
    dtype = w.dtype
    for t in tensors:
        if t is not None and t.dtype != dtype:
            dtype = torch.promote_types(dtype, t.dtype)
    device = w.device
    shape = common.state_shape(w.shape, scope)
    if torch.compiler.is_compiling():  # the graph's own temporaries, which inductor plans (below)
        return tuple(torch.empty(shape, dtype=dtype, device=device) for _ in range(count))
    if is_distributed(w):
        if scope != "element":
            raise RuntimeError(_NO_REDUCED_DTENSOR)
        return _distributed_buffers(cache, count, w, dtype)
    return common.scratch_views(
        cache,
        (dtype, device, scope),
        count,
        math.prod(shape),
        shape,
        lambda n: torch.empty(n, dtype=dtype, device=device),
        lambda t, shape: t.view(shape),
    )


_FLAG = common.Check("flag")


def is_distributed(w: torch.Tensor) -> bool:
    """Whether ``w`` is a DTensor (torch.distributed.tensor, FSDP2's parameters): a tensor of a device mesh,
    sharded or replicated over it, whose operations run on the local shards and communicate as needed."""
    return getattr(w, "device_mesh", None) is not None and hasattr(w, "placements")


def sum_over_tensors(sums: list[torch.Tensor]) -> Any:
    """The sum of per-tensor sums (0-d tensors), in order. Where the tensors are DTensors, a sharded one's
    sum is partial on each rank: the partial sums are added locally and all-reduced once, for all the
    tensors (not once per tensor), then the replicated ones' added; the result is replicated over the
    first tensor's mesh."""
    if not any(is_distributed(s) for s in sums):
        total: Any = 0.0
        for s in sums:
            total = total + s
        return total
    from torch.distributed.tensor import DTensor, Replicate

    mesh = next(s.device_mesh for s in sums if is_distributed(s))
    partial, replicated = None, None
    for s in sums:
        if _partial(s):
            if not _partial(s, mesh):  # not this one collective: the DTensor's own
                s = s.full_tensor()
            else:
                local = s.to_local()
                partial = local if partial is None else partial + local
                continue
        value = s.to_local() if is_distributed(s) else s
        replicated = value if replicated is None else replicated + value
    total = torch.zeros((), dtype=sums[0].dtype, device=sums[0].device)
    if partial is not None:
        partial = partial.clone()
        torch.distributed.all_reduce(partial, group=mesh.get_group())
        total = total + partial
    if replicated is not None:
        total = total + replicated
    return DTensor.from_local(total, mesh, [Replicate()], run_check=False)


def _partial(s: Any, mesh: Any = None) -> bool:
    """Whether ``s`` is a DTensor partial on each rank (a sharded tensor's sum), and, given ``mesh``, one
    that a collective over that one-dimensional mesh completes."""
    if not (is_distributed(s) and any(p.is_partial() for p in s.placements)):
        return False
    return mesh is None or (s.device_mesh is mesh and mesh.ndim == 1)


def all_reduced(values: dict[Any, tuple[Any, ...]]) -> dict[Any, tuple[Any, ...]]:
    """Each tensor's reductions (0-d tensors, by parameter), whole: where they are DTensors partial over a
    one-dimensional mesh (a sharded tensor's sum, one per shard), their local values are stacked and
    all-reduced in one collective, for every tensor, and come back replicated; the others as they are.
    The order is the parameters', the same on every rank."""
    from torch.distributed.tensor import DTensor, Replicate

    partial = [(key, i, s) for key, sums in values.items() for i, s in enumerate(sums) if _partial(s)]
    if not partial:
        return values
    mesh = partial[0][2].device_mesh
    partial = [(key, i, s) for key, i, s in partial if _partial(s, mesh)]  # another mesh: DTensor's own
    if not partial:  # a mesh of more than one dimension: DTensor completes each sum itself
        return values
    local = torch.stack([s.to_local() for _, _, s in partial])
    torch.distributed.all_reduce(local, group=mesh.get_group())
    out = {key: list(sums) for key, sums in values.items()}
    for (key, i, _), total in zip(partial, local.unbind()):
        out[key][i] = DTensor.from_local(total, mesh, [Replicate()], run_check=False)
    return {key: tuple(sums) for key, sums in out.items()}


def _distributed_buffers(cache: dict, count: int, w: torch.Tensor, dtype: torch.dtype) -> tuple:
    """``count`` buffers laid out like the DTensor ``w`` (its mesh and placements: the local shards' size),
    kept between steps. Not views of one flat buffer: a DTensor's shape is the whole tensor's."""
    key = ("distributed", dtype, tuple(w.shape), tuple(w.placements), id(w.device_mesh))
    buffers = cache.get(key, ())
    if len(buffers) < count:
        buffers = buffers + tuple(torch.empty_like(w, dtype=dtype) for _ in range(count - len(buffers)))
        cache[key] = buffers
    return buffers[:count]


def traceable(w: torch.Tensor, g: torch.Tensor, state: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """A parameter, its gradient and its state with each 0-d tensor as a view of one element, for a step
    that torch.compile traces: Dynamo (torch 2.13) takes a 0-d float64 tensor on the CPU for a Python
    float, and an in-place update of it (a 0-d parameter, NovoGrad's per-tensor moment) is silently
    dropped from the graph (torch.optim's for-loop Adamax loses its 0-d parameter's update the same way);
    a write through a view is kept. The view writes into the tensor itself."""

    def one(t: Any) -> Any:
        return t.view(1) if isinstance(t, torch.Tensor) and t.dim() == 0 else t

    return one(w), one(g), {name: one(t) for name, t in state.items()}


def masks(cache: dict, count: int, w: torch.Tensor, scope: str = "element") -> tuple[torch.Tensor, ...]:
    """``count`` boolean buffers shaped like ``w`` (``scope``: as ``scratch``) on its device (a select's
    conditions), kept between steps."""
    device = w.device
    shape = common.state_shape(w.shape, scope)
    if torch.compiler.is_compiling():  # see scratch
        return tuple(torch.empty(shape, dtype=torch.bool, device=device) for _ in range(count))
    if is_distributed(w):
        if scope != "element":
            raise RuntimeError(_NO_REDUCED_DTENSOR)
        return _distributed_buffers(cache, count, w, torch.bool)
    return common.scratch_views(
        cache,
        (torch.bool, device, scope),
        count,
        math.prod(shape),
        shape,
        lambda n: torch.empty(n, dtype=torch.bool, device=device),
        lambda t, shape: t.view(shape),
    )


def from_param(w: torch.Tensor, dtype: torch.dtype, initial: Any) -> torch.Tensor:
    """A state that starts at ``initial(w)`` (w in the state's dtype), created before the parameter's first
    update: a new tensor, never a view of the parameter (which is then updated in place)."""
    x = w.detach().to(dtype)
    return torch.empty_like(x, memory_format=torch.preserve_format).copy_(initial(x))


class RuleOptimizer(torch.optim.Optimizer):
    """What every generated torch optimizer shares: construction, copies and pickling, ``state_dict`` with
    exact state, the loop over the parameters that creates their state, and the step: Keras's options as
    stages (``options_torch.Call``) around the rule. A generated class sets the class attributes and writes
    ``__init__`` (its hyperparameters), ``_states`` (what a parameter keeps) and ``_update`` (the rule's
    own maths, run on update calls only)."""

    #: the rule's class name and generated module (for messages and the fused kernels)
    rule = ""
    module = ""
    #: why the rule has no kernels (Numba's, Triton's), or "" where it has them
    kernels_refused = ""
    #: the states whose dtype a keyword of the constructor chooses: state -> keyword (``mu_dtype``)
    stored_dtypes: dict[str, str] = {}
    #: why the rule's step needs each parameter whole (an axis reduction, a matrix product: ``analysis.
    #: whole_tensor_reason``), or "" where it runs on a DTensor's local shard (``Call.tensors`` gathers)
    whole_tensors = ""
    #: the names of everything a parameter may keep (its state in ``self.state[w]``)
    keeps: frozenset[str] = frozenset()
    #: the Keras options this optimizer takes (``options.KERAS_OPTIONS``, less those the rule defines itself)
    options: tuple[str, ...] = ()
    #: what each parameter group keeps for the rule (``group[name]``): (name, initial value or a function of
    #: the group that gives it from its hyperparameters, whether a 0-d tensor), there from the first call on,
    #: even one that does not update
    global_states: tuple[tuple[str, float | Callable[[dict], float], bool], ...] = ()
    #: torch's names for the rule's hyperparameters in the parameter groups: {rule's name: (key, index in
    #: the key's tuple or None)} (``beta_1`` is ``betas[0]``, ``epsilon`` is ``eps``), so that torch's
    #: schedulers (OneCycleLR's momentum cycling) find them; the rule's names are accepted in a group too
    torch_names: dict[str, tuple[str, int | None]] = {}
    #: the rule has torch.optim's ``maximize`` flag itself (TorchAdam): the stages do not flip the signs again
    rule_maximizes = False
    #: how each hyperparameter of the rule is checked in a parameter group: {key: its check, or a pair of
    #: them for a tuple of torch's (betas)}, and the rule's groups of which at most one may be given
    #: (Keras's options' own are ``runtime/options.py``'s: ``_all_checks``)
    checks: dict[str, Any] = {}
    exclusive: tuple[tuple[str, ...], ...] = ()

    #: the rule reads the objective's value (``loss``: Polyak's step size): ``step`` takes it from the closure
    #: or ``value=``
    reads_loss = False

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, value: Any = None) -> Any:
        """One update of every parameter that has a gradient; returns the closure's loss. A rule that reads
        the objective's value takes the closure's, or ``value`` (the loss already computed)."""
        from .options_torch import Call, share_global_norm

        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if value is not None and not self.reads_loss:
            raise TypeError(
                f"{type(self).__name__}.step() reads no objective value; received value={value!r}"
            )
        objective = (
            loss_value(value if value is not None else loss, type(self).__name__) if self.reads_loss else None
        )
        calls = []
        for i, group in enumerate(self.param_groups):
            params = [w for w in group["params"] if w.grad is not None]
            if not params:
                continue
            self._check_group(i, group)
            calls.append(Call(self, group, params, objective))
            for name, init, array in self.global_states:
                if name not in group:  # a number, or a function of the group's hyperparameters
                    initial = init(group) if callable(init) else init
                    group[name] = global_value(initial) if array else initial
        share_global_norm(calls)  # global_clipnorm: the norm over every group's gradients
        for call in calls:
            call.groups = len(calls)
        steps = []
        for call in calls:
            if call.is_update:
                run = self._update(call.group, call)
                if run is not None:  # a generator: the rule reduces over all tensors (see over_groups)
                    steps.append(run)
            else:  # gradient accumulation: the rule does not run
                call.skip(self._case(call.group))
        over_groups(steps)
        return loss

    def _check_group(self, i: int, group: dict[str, Any]) -> None:
        """A value put into a parameter group since its last check (by hand, by a scheduler) is checked as the
        constructor checks its own; a rule's name put there (``beta_1``) goes under torch's (``betas[0]``).
        Unchanged values (the same objects as at the last check) cost one identity test each. Under
        torch.compile the group's values are what its trace made of them (a tensor lr): not checked there."""
        if torch.compiler.is_compiling():
            return
        if any(name in group for name in self.torch_names):
            renamed = self._torch_named(group)
            for name in self.torch_names:
                group.pop(name, None)
            group.update(renamed)
        # torch's own flags are left out: they choose no maths here, and torch.compile sets capturable=True
        # in the groups it traces (the constructor and add_param_group check them)
        keys = [k for k in self.defaults if k not in TORCH_FLAGS]
        values = [group[k] for k in keys]
        seen = self.__dict__.setdefault("_last_checked", {})  # group index -> its values when last checked
        last = seen.get(i)
        if last is not None and len(last) == len(values) and all(a is b for a, b in zip(last, values)):
            return
        try:
            checked = self._checked(**dict(zip(keys, values)))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"param_groups[{i}]: {exc}") from None
        for k in keys:
            if not (k == "lr" and isinstance(group[k], torch.Tensor)):  # a tensor lr stays the tensor it is
                group[k] = checked[k]
        seen[i] = [group[k] for k in keys]

    def _update(self, group: dict[str, Any], call: Any) -> None:
        """The rule's own step on an update call (generated)."""
        raise NotImplementedError

    def _state_dtype(self, w: torch.Tensor, name: str) -> torch.dtype:
        """The dtype of ``w``'s state ``name``: its keyword's choice (``mu_dtype``), else ``state_dtype``'s."""
        chosen = self.dtypes.get(self.stored_dtypes.get(name, ""))
        return state_dtype(w, self.state_dtype if chosen is None else chosen)

    def _case(self, group: dict[str, Any]) -> int:
        """The case of the rule that this group's hyperparameters select (generated where there are several)."""
        return 0

    def _states(self, group: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
        """What each parameter of this group keeps: (name, "element" or "tensor", initial value: a number or
        a function of the parameter)."""
        return iter(())

    def _setup(
        self,
        params: Any,
        defaults: dict[str, Any],
        state_dtype: Any,
        fused: bool | str | None,
        dtypes: dict[str, Any] | None = None,
    ) -> None:
        self.state_dtype = check_state_dtype(state_dtype)
        #: the dtypes chosen by the rule's keywords (``mu_dtype``: ``stored_dtypes`` says of which states)
        self.dtypes = {k: check_state_dtype(v, k) for k, v in (dtypes or {}).items()}
        self.fused = check_fused(fused)
        self._load_fused()
        self._scratch: dict = {}  # the plain path's buffers for element-wise temporaries, kept between steps
        self._stage_scratch: dict = {}  # the options' stages' buffers (the gradient they make, ...)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for w in group["params"]:
                check_floating(w, self.rule)

    def _load_fused(self) -> None:
        """The generated kernels ``fused`` asks for: Numba's (``fused=True``: CPU parameters) now; Triton's
        (``fused="triton"``, or ``fused=True`` with CUDA parameters) at their first step
        (:meth:`_triton_case`), so that a CPU user does not import Triton."""
        self._triton_module: Any = None
        if self.kernels_refused and self.fused in (True, "triton"):
            raise ValueError(
                f"{self.rule}(fused={self.fused!r}): {self.rule} has no kernels: {self.kernels_refused}."
                " Use fused=None (the plain path where there are no kernels) or fused=False"
            )
        if self.kernels_refused:
            self._triton_module = False  # fused=None: the plain path
        self._fused = fused_support.load(self.module, self.rule) if self.fused is True else None
        if self.fused == "triton":
            self._triton_module = _triton_load(self.module, self.rule)

    def _triton_case(self, case: int) -> Any:
        """Case ``case`` of the rule's Triton kernels, or None where Triton is not installed (``fused=None``
        or True: the step stays on the plain path; the import is not tried again)."""
        module = self._triton_module
        if module is None:
            try:
                module = self._triton_module = _triton_load(self.module, self.rule)
            except ImportError:
                module = self._triton_module = False
        return None if module is False else getattr(module, f"UPDATE_CASE_{case}")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's, with the rule's names of hyperparameters (``beta_1``) put under torch's (``betas[0]``),
        and the values the group gives checked as the constructor checks its own."""
        group = self._torch_named(param_group)
        given = {k: v for k, v in group.items() if k in self.defaults}
        if given:
            merged = {**self.defaults, **given}
            group.update(self._checked(**{k: v for k, v in merged.items() if k not in TORCH_FLAGS}))
            group.update(torch_flags(*(merged[k] for k in TORCH_FLAGS)))
        super().add_param_group(group)

    @classmethod
    def _checked(cls, **values: Any) -> dict[str, Any]:
        """A parameter group's hyperparameters (``values``: one for each of ``checks``), checked as the
        generated class's table ``checks`` says, and at most one of each of its ``exclusive`` groups given."""
        checks = cls._all_checks()
        if values.keys() != checks.keys():
            missing, unknown = sorted(checks.keys() - values.keys()), sorted(values.keys() - checks.keys())
            raise TypeError(
                f"{cls.__name__}'s hyperparameters are {', '.join(checks)}."
                + (f" Missing: {', '.join(missing)}." if missing else "")
                + (f" Unknown: {', '.join(unknown)}." if unknown else "")
            )
        out = {}
        for key, check in checks.items():
            value = values[key]
            if isinstance(check, tuple):  # a pair of torch's (betas)
                first, second = pair(key, value, None, None)
                out[key] = (check[0](f"{key}[0]", first), check[1](f"{key}[1]", second))
            else:
                out[key] = check(key, learning_rate(value) if check.kind == "learning_rate" else value)
        exclusive = cls.exclusive + tuple(e for e in options.EXCLUSIVE if set(e) <= set(cls.options))
        for names in exclusive:
            common.check_exclusive(**{name: out[name] for name in names})
        return out

    @classmethod
    def _all_checks(cls) -> dict[str, Any]:
        """The checks of a parameter group's keys: the rule's own (the generated ``checks``), Keras's
        options it takes (``options.CHECKS``), and torch.optim's ``maximize`` where the rule has none."""
        checks = dict(cls.checks)
        checks.update((name, options.CHECKS[name]) for name in cls.options)
        checks.setdefault("maximize", _FLAG)
        return checks

    def _torch_named(self, group: dict[str, Any]) -> dict[str, Any]:
        group = dict(group)
        for name, (key, index) in self.torch_names.items():
            if name not in group:
                continue
            value = group.pop(name)
            if index is None:
                group[key] = value
            else:
                entries = list(group.get(key, self.defaults[key]))
                entries[index] = value
                group[key] = tuple(entries)
        return group

    def __getstate__(self) -> dict[str, Any]:
        """torch's (what ``copy.deepcopy`` and pickle keep), plus this optimizer's own options."""
        own = {"state_dtype": self.state_dtype, "dtypes": self.dtypes, "fused": self.fused}
        return {**super().__getstate__(), **own}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        # unpickled, or copied (torch's load_state_dict calls this too, with neither key)
        if "fused" in state or not hasattr(self, "fused"):
            self.state_dtype = state.pop("state_dtype", None)
            self.dtypes = state.pop("dtypes", {})
            self.fused = state.pop("fused", False)
            self._load_fused()
        self._scratch, self._stage_scratch = {}, {}
        super().__setstate__(state)
        # an optimizer pickled before its groups held torch's flags (torch adds some to defaults only)
        for name, default in TORCH_FLAGS.items():
            self.defaults.setdefault(name, default)
            for group in self.param_groups:
                group.setdefault(name, default)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's, keeping each state tensor in the precision policy's dtype (torch would cast it to the
        parameter's: bfloat16 state for a bfloat16 parameter)."""
        keeps = set(self.keeps)
        for entry in state_dict.get("state", {}).values():
            unknown = set(entry) - keeps
            if unknown:
                raise ValueError(
                    f"this state_dict holds {sorted(unknown)}, which {self.rule} does not keep (it keeps"
                    f" {sorted(keeps) or 'nothing per parameter'}): is it the state of another optimizer?"
                )
        rule = state_dict.get("optforge_rule")
        if rule is not None and rule != self.rule:
            raise ValueError(f"this state_dict was written by {rule}, not {self.rule}")
        # a state_dict from before torch's names (beta_1 in its groups, not betas): the same values
        groups = [self._torch_named(group) for group in state_dict.get("param_groups", [])]
        state_dict = {**state_dict, "param_groups": groups}
        for group in groups:
            group.setdefault("maximize", False)
            for name, default in TORCH_FLAGS.items():
                group.setdefault(name, default)
        for group in state_dict.get("param_groups", []):
            missing = set(self.defaults) - set(group)
            if missing:
                raise ValueError(
                    f"this state_dict's parameter groups lack {sorted(missing)}: is it the state of another optimizer?"
                )
        saved = [i for group in state_dict.get("param_groups", []) for i in group["params"]]
        exact = {i: dict(state_dict["state"][i]) for i in saved if i in state_dict.get("state", {})}
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "optforge_rule"})
        params = [w for group in self.param_groups for w in group["params"]]
        for i, w in zip(saved, params):  # torch rounded floating state through the parameter's dtype: undo
            for key, value in exact.get(i, {}).items():
                if isinstance(value, torch.Tensor) and value.is_floating_point():
                    self.state[w][key] = value.to(device=w.device, dtype=self._state_dtype(w, key))

    def state_dict(self) -> dict[str, Any]:
        """torch's, plus the name of the rule that wrote it (checked when loading)."""
        return {**super().state_dict(), "optforge_rule": self.rule}

    def _tensors(
        self, params: list[torch.Tensor], group: dict[str, Any], wanted: list | None = None
    ) -> Iterator[tuple[torch.Tensor, dict]]:
        """Each parameter that has a gradient, with its state (created at its first update); ``wanted``:
        ``self._states(group)``, if known."""
        wanted = list(self._states(group)) if wanted is None else wanted
        names = {name for name, _, _ in wanted}
        states = self.state
        for w in params:
            check_param(w, self.rule)
            state = states[w]
            if not names <= state.keys():  # its first update (or a state that an option now keeps)
                for name, scope, init in wanted:
                    if name not in state:
                        state[name] = new_state(w, scope, init, self._state_dtype(w, name), group)
            yield w, state


def new_state(
    w: torch.Tensor, scope: str, init: Any, dtype: torch.dtype, group: dict | None = None
) -> torch.Tensor:
    """A state tensor at its initial value: shaped like ``w`` (``element``) or 0-d (``tensor``), on its device,
    in ``dtype`` (float16/bfloat16 parameters: float32 state). ``init``: a number, or a function of ``w``
    (a state that starts from the parameter). ``group``: the parameter's group, whose hyperparameters a
    state kept for some tensors only may read (``common.PerTensor``)."""
    if callable(init):
        return from_param(w, dtype, init)
    if not common.kept(w.shape, scope, group):  # a state this parameter does not keep: an empty stand-in
        value = torch.zeros(0, dtype=dtype, device=w.device)
        return replicated(value, w.device_mesh) if is_distributed(w) else value
    if scope.startswith("element/"):  # axes reduced to length 1: Adafactor's row and column moments
        value = torch.full(common.state_shape(w.shape, str(scope)), init, dtype=dtype, device=w.device)
        # of a DTensor: whole on every rank (its rule gathers the parameter whole: ``whole``)
        return replicated(value, w.device_mesh) if is_distributed(w) else value
    if scope == "element":
        if init == 0:
            return torch.zeros_like(w, dtype=dtype, memory_format=torch.preserve_format)
        return torch.full_like(w, init, dtype=dtype, memory_format=torch.preserve_format)
    value = torch.full((), init, dtype=dtype, device=w.device)
    # one value per tensor: the same on every rank of its mesh
    return replicated(value, w.device_mesh) if is_distributed(w) else value


def replicated(value: torch.Tensor, mesh: Any) -> torch.Tensor:
    """``value``, the same on every rank, as a DTensor replicated over ``mesh``."""
    from torch.distributed.tensor import DTensor, Replicate

    return DTensor.from_local(value, mesh, [Replicate()] * mesh.ndim, run_check=False)


def whole(x: Any) -> Any:
    """A DTensor's whole tensor, as a plain tensor: gathered where it is sharded (a new tensor), the local
    tensor itself where it is replicated (written in place). Anything else as it is."""
    if not is_distributed(x):
        return x
    if all(p.is_replicate() for p in x.placements):
        return x.to_local()
    return x.full_tensor()


def write_shard(x: Any, value: torch.Tensor) -> None:
    """Write into the sharded DTensor ``x`` its shard of ``value`` (a whole tensor from ``whole``, updated):
    each rank copies its own part, nothing is communicated. A replicated one was written in place."""
    if not is_distributed(x) or all(p.is_replicate() for p in x.placements):
        return
    from torch.distributed.tensor import distribute_tensor

    shard = distribute_tensor(value, x.device_mesh, x.placements, src_data_rank=None)
    x.to_local().copy_(shard.to_local())


#: a value with an axis reduced (Adafactor's moments) or a matrix (Muon's) of a DTensor that was not
#: gathered whole: every generated rule that has one gathers (``RuleOptimizer.whole_tensors``)
_NO_REDUCED_DTENSOR = (
    "a value with an axis reduced to length 1 (a row, a column) or a matrix product of a DTensor's shard:"
    " its rule must gather the tensor whole (RuleOptimizer.whole_tensors)"
)


def _axis_sum(x: torch.Tensor, axis: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """The sum over ``axis``, kept with length 1 (into ``out`` where given); where ``x`` has no such axis
    (it has length 1), a copy of ``x`` (held apart from a buffer that is updated in place later)."""
    if x.dim() < -axis:
        return x.clone() if out is None else out.copy_(x)
    return _into(out, torch.sum(x, dim=axis, keepdim=True))


def _axis_mean(x: torch.Tensor, axis: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """The mean over ``axis``, kept with length 1: the sum over the axis's length, and 0 over an empty axis
    (a tensor with no elements); ``axis_sum``'s convention for an axis ``x`` lacks."""
    if x.dim() < -axis:
        return x.clone() if out is None else out.copy_(x)
    return _into(out, torch.sum(x, dim=axis, keepdim=True)).div_(max(x.shape[axis], 1))


def _axis_max(x: torch.Tensor, axis: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """The maximum over ``axis``, kept with length 1, -inf over an empty axis (``axis_sum``'s convention for
    an axis ``x`` lacks)."""
    if x.dim() < -axis:
        return x.clone() if out is None else out.copy_(x)
    if x.shape[axis] == 0:
        shape = list(x.shape)
        shape[axis] = 1
        return _into(out, torch.full(shape, -torch.inf, dtype=x.dtype, device=x.device))
    return _into(out, torch.amax(x, dim=axis, keepdim=True))


def _into(out: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    """``value``, or ``out`` holding it (a row's register: its few values copied in)."""
    return value if out is None else out.copy_(value)


def as_matrix(x: torch.Tensor) -> torch.Tensor:
    """``x`` viewed as a matrix (its last two axes): below rank 2, a ``1 x n`` (``1 x 1``) matrix."""
    return x.reshape((1,) * (2 - x.dim()) + tuple(x.shape)) if x.dim() < 2 else x


def matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    like: torch.Tensor | None = None,
    scope: str = "element",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The matrix product ``a @ b`` of two values viewed as matrices (``as_matrix``), batched over leading
    axes: into ``out`` (a buffer of the result's shape, not an operand's), or shaped as the parameter
    ``like``'s ``scope`` says (``common.state_shape``: a vector's ``1 x n`` result is a vector again)."""
    # torch does not promote a product's operands: both in the buffer's dtype (the wider of the state's and
    # the parameter's), or the wider of theirs
    dtype = out.dtype if out is not None else torch.promote_types(a.dtype, b.dtype)
    a, b = as_matrix(a).to(dtype), as_matrix(b).to(dtype)
    if a.dim() == b.dim() == 2 and torch.compiler.is_compiling():
        # inductor (torch 2.13) rewrites an addition with alpha of a matrix product, add(mm(a, b), c,
        # alpha=k) or c.add_(mm(a, b), alpha=k), into addmm and drops alpha: silently wrong (10.8 apart
        # on a 4 x 4 product; OptaxMuon's step NaN; the family of pytorch issue 167313). A batch of one
        # product is not matched, and is the same product.
        product = torch.bmm(a.unsqueeze(0), b.unsqueeze(0)).squeeze(0)
        if out is not None:
            as_matrix(out).copy_(product)
            return out
    elif out is not None:
        torch.matmul(a, b, out=as_matrix(out))
        return out
    else:
        product = torch.matmul(a, b)
    return product if like is None else product.reshape(common.state_shape(like.shape, scope))


def transpose(
    x: torch.Tensor, like: torch.Tensor | None = None, scope: str = "element", out: torch.Tensor | None = None
) -> torch.Tensor:
    """``x`` viewed as a matrix with its last two axes swapped: a view (shaped as ``matmul`` says), or copied
    into ``out`` (a value kept by name must not follow the buffer it was read from)."""
    swapped = as_matrix(x).transpose(-1, -2)
    if out is not None:
        as_matrix(out).copy_(swapped)
        return out
    return swapped if like is None else swapped.reshape(common.state_shape(like.shape, scope))


def rows(w: torch.Tensor) -> int:
    """The length of ``w``'s axis before the last (1 below rank 2: a ``1 x n`` matrix)."""
    return w.shape[-2] if w.dim() >= 2 else 1


def cols(w: torch.Tensor) -> int:
    """The length of ``w``'s last axis (1 for a 0-d tensor)."""
    return w.shape[-1] if w.dim() >= 1 else 1


def rank(w: torch.Tensor) -> int:
    """The number of axes of ``w``."""
    return w.dim()


def tensor_max(x: torch.Tensor) -> torch.Tensor:
    """The largest element of ``x``, a 0-d tensor: -inf for an empty tensor (the maximum's identity;
    ``torch.amax`` raises there)."""
    if x.numel() == 0:
        return torch.full((), -math.inf, dtype=x.dtype, device=x.device)
    return torch.amax(x)


def machine_epsilon(w: torch.Tensor) -> float:
    """The machine epsilon of ``w``'s dtype (``torch.finfo(w.dtype).eps``, as torch's Adafactor reads it)."""
    return torch.finfo(w.dtype).eps


def sign(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The sign of each element, NaN where ``x`` is NaN as in NumPy and JAX (``torch.sign(nan)`` is 0: a
    sign-based rule, Lion, would take a NaN gradient for a zero one and step on)."""
    if out is None:
        s = torch.sign(x)
    elif out.dtype == x.dtype:
        s = torch.sign(x, out=out)
    else:
        s = out.copy_(torch.sign(x))
    return torch.where(torch.isnan(x), x, s, out=s)


#: torch.optim's keywords that choose how a step runs, with their defaults (the parameter groups keep them)
TORCH_FLAGS = {"foreach": None, "capturable": False, "differentiable": False}
_NOT_YET = {
    "capturable": "a step that a CUDA graph can capture (no host synchronisation) is not there yet: the step"
    " count and the learning rate are read on the host",
    "differentiable": "autograd through the step is not there: the step updates the parameters in place"
    " under torch.no_grad()",
}


def torch_flags(foreach: Any, capturable: Any, differentiable: Any) -> dict[str, Any]:
    """torch.optim's ``foreach``, ``capturable`` and ``differentiable``, checked: ``foreach`` is None or a
    bool (one implementation runs either way); the other two are False (True raises NotImplementedError)."""
    if foreach is not None and not isinstance(foreach, bool):
        raise TypeError(f"`foreach` must be None or a bool. Received: foreach={foreach!r}")
    out = {"foreach": foreach}
    for name, value in (("capturable", capturable), ("differentiable", differentiable)):
        out[name] = common.check_flag(name, value)
        if out[name]:
            raise NotImplementedError(f"`{name}=True`: {_NOT_YET[name]}. Use {name}=False (the default).")
    return out


def pair(key: str, value: Any, first: Any, second: Any) -> tuple[Any, Any]:
    """A tuple hyperparameter of torch's (``betas``), with the rule's names for its entries (``beta_1``,
    ``beta_2``: None where not given; where given, they win)."""
    try:
        a, b = value
    except (TypeError, ValueError):
        raise TypeError(f"`{key}` must be a pair of floats. Received: {key}={value!r}") from None
    return (a if first is None else first), (b if second is None else second)


def learning_rate(value: Any) -> Any:
    """A learning rate as torch.optim takes it: a 0-d tensor (torch.compile's choice) is read as its float;
    anything else as given (checked by ``common.check_learning_rate``)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"`lr` as a tensor must hold one value. Received: a tensor of shape {tuple(value.shape)}"
            )
        return float(value)
    return value


def float32(x: Any) -> Any:
    """The rules' ``float32(x)``: ``x`` rounded to the nearest float32, in its own type (a tensor keeps its
    dtype and device: torch then computes with it as with any value of that dtype). Under torch.compile a
    number is a symbolic float whose arithmetic the compiler simplifies (``c - (c - x)`` is ``x``, and the
    rounding was lost): there it is rounded as a 0-d float64 tensor, by a cast the compiler keeps."""
    if isinstance(x, torch.Tensor):
        return x.to(torch.float32).to(x.dtype)
    if torch.compiler.is_compiling():  # a SymFloat: its arithmetic is simplified, c - (c - x) to x
        return torch.scalar_tensor(x, dtype=torch.float64).to(torch.float32).to(torch.float64)
    return common.float32(x)


def axis_sum(
    x: torch.Tensor, axis: int, out: torch.Tensor | None = None, like: Any = None, scope: str = "element"
) -> torch.Tensor:
    """The sum over ``axis``, kept with length 1, into ``out`` (``_axis_sum``); ``like``: shaped as the
    parameter's ``scope`` says (a Gram matrix's row of a vector: ``(1,)``, not ``(1, 1)``)."""
    return _shaped(_axis_sum(x, axis, out), like, scope)


def axis_mean(
    x: torch.Tensor, axis: int, out: torch.Tensor | None = None, like: Any = None, scope: str = "element"
) -> torch.Tensor:
    """The mean over ``axis``, kept with length 1 (``_axis_mean``), shaped as ``axis_sum`` says."""
    return _shaped(_axis_mean(x, axis, out), like, scope)


def axis_max(
    x: torch.Tensor, axis: int, out: torch.Tensor | None = None, like: Any = None, scope: str = "element"
) -> torch.Tensor:
    """The maximum over ``axis``, kept with length 1 (``_axis_max``), shaped as ``axis_sum`` says."""
    return _shaped(_axis_max(x, axis, out), like, scope)


def _shaped(result: torch.Tensor, like: Any, scope: str) -> torch.Tensor:
    return result if like is None else result.reshape(common.state_shape(like.shape, scope))


def cover_max(x: torch.Tensor, like: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """SM3's cover of ``x`` (shaped like the parameter ``like``): for each axis, the maximum over the other
    axes, the vectors laid end to end (``common.cover_slices``), into ``out`` (else a new tensor); a vector
    or a 0-d tensor is its own cover; a tensor with no elements, 0 (``common.cover_slices``)."""
    shape = tuple(like.shape)
    x = torch.broadcast_to(x, shape)
    if out is None:
        out = torch.empty(common.cover_length(shape), dtype=x.dtype, device=x.device)
    if len(shape) < 2:
        return out.copy_(x.reshape(out.shape))
    if x.numel() == 0:  # no element lies in any slice: nothing reads them (common.cover_slices)
        return out.fill_(0)
    axes = range(len(shape))
    for (start, stop, _), r in zip(common.cover_slices(shape), axes):
        out[start:stop].copy_(torch.amax(x, dim=tuple(a for a in axes if a != r)))
    return out


def cover_min(mu: torch.Tensor, like: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Per element of a tensor shaped like ``like``, the minimum over its axes of the cover ``mu``
    (``cover_max``) at the element's index along each, into ``out`` (else a new tensor)."""
    parts = [mu[start:stop].reshape(shape) for start, stop, shape in common.cover_slices(tuple(like.shape))]
    if out is None:
        out = torch.empty(like.shape, dtype=mu.dtype, device=mu.device)
    out.copy_(parts[0])
    for part in parts[1:]:
        torch.minimum(out, part, out=out)
    return out


def loss_value(value: Any, rule: str) -> torch.Tensor:
    """The objective's value at this step (the closure's loss, or ``step(value=...)``): a 0-d tensor, taken
    out of the autograd graph, on the device it is on (no synchronisation); a number becomes a float64
    tensor."""
    value = common.loss_value(
        value,
        rule,
        "step(closure) with a closure that returns it, or step(value=<the loss at the current parameters>)",
    )
    if not isinstance(value, torch.Tensor):
        value = torch.tensor(float(value), dtype=torch.float64)
    if value.dim() != 0:
        raise ValueError(
            f"{rule}: the objective's value is a number. Received a tensor of shape {tuple(value.shape)}"
        )
    return value.detach()
