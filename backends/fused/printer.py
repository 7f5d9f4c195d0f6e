"""The fused path: each case's loop over the tensors as one Numba row kernel that reads and writes each element once,
called on every tensor (or part of one) by the threads of ``runtime/fused_numba.drive``.

The kernels run on 1-D views of C-contiguous arrays of one dtype (float32 or float64), in place. Every
per-element statement of the loop becomes scalar code inside a single ``for i in range(n)`` loop; every
subexpression that reads no per-element value (a hyperparameter, the step, a per-tensor norm, a literal
number) is an invariant (``compiler/passes/hoist.py``: one name each, ``c_lr``): computed once per step in
Python (packed into one array, ``k_``) or once per tensor inside the kernel, in the loop's dtype. The
statements are kernel trees (``compiler/passes/evaluation.py``) printed with this backend's table. So the kernel's arithmetic has the NumPy module's
operations in the NumPy module's order and precision (a float32 parameter is updated in float32, with
hyperparameters rounded to float32 first, as NumPy does with a Python float), and Numba never promotes to
float64 on a literal. Static conditions (an option given, ``momentum == 0``) are hoisted as booleans;
LLVM takes their tests out of the loop.

A reduction over one tensor (``TensorSum``, ``TensorMax``: NovoGrad's layer norm, ``clipnorm``) is its
own kernel that replays the per-element statements it reads, called from the update kernel; the
per-tensor code between them (per-tensor state, such as NovoGrad's ``v``) is printed the same way, as
scalar code, with the per-tensor names as locals. Reductions accumulate in float64 and may
be reassociated (``fastmath={"reassoc"}``) so that they vectorise; the element-wise kernels keep strict
IEEE arithmetic and NumPy's error model (``x/0`` is inf, never an exception).
"""

from __future__ import annotations

import dataclasses

import sympy as sp

from optforge.compiler.dsl import Over, Reduction
from optforge.compiler.errors import BackendError
from optforge.compiler.ir import Assign, Program, Role, Scope, Section, SectionKind, base
from optforge.compiler.passes.conditions import given
from optforge.compiler.passes.evaluation import Types, kernel_tree
from optforge.compiler.passes.hoist import Hoisted, Invariants, hoist_tree
from optforge.compiler.passes.typing import boolean_names

from ..base import Backend, fused_name, section_scalars
from ..numpy.printer import NumPyBackend
from ..printer import ExprPrinter, OpPrinter


class KernelPrinter(ExprPrinter):
    """The functions of scalar code in a Numba loop: NumPy's scalar functions where Python's differ (NaN in,
    NaN out, as in the NumPy module). The kernels' code is printed from kernel trees
    (``passes/evaluation.py``) whose invariants are named (``passes/hoist.py``)."""

    backend = "fused"
    functions = {
        "sqrt": ("math.sqrt", ""),
        "Abs": ("abs", ""),
        "exp": ("math.exp", ""),
        "log": ("math.log", ""),
        "erf": ("math.erf", ""),
        "sign": ("np.sign", ""),
        "Max": ("np.maximum", ""),
        "Min": ("np.minimum", ""),
        "float32": ("np.float32", ""),  # Numba then computes with it in the wider dtype, as NumPy
    }

    def _print_Upcast(self, expr) -> str:  # the element, which the kernel computes with in its dtype
        return self._print(expr.args[0])

    def call_text(self, fn: str, array: bool, args: list[str], arrays: tuple[bool, ...] = ()) -> str:
        if fn == "clip":  # np.clip(x, lo, hi) is minimum(maximum(x, lo), hi)
            x, lo, hi = args
            return f"np.minimum(np.maximum({x}, {lo}), {hi})"
        return super().call_text(fn, True, args, arrays)


class KernelCode:
    """Scalar code of one kernel: each expression as a kernel tree (its ``locals`` are the loop's or the
    per-tensor code's variables), its invariants named by the kernel's :class:`Invariants`, printed with
    the kernel printer's table. ``used``: the invariants the printed code reads; ``stored``: where each
    optional state is kept, in this case (its condition, the case's flags decided)."""

    def __init__(
        self,
        rule: str,
        locals_: set[str],
        hoister: Invariants,
        names: dict[str, str],
        stored: dict[str, sp.Basic] | None = None,
    ) -> None:
        self.rule = rule
        self.stored = stored or {}
        self.names = names
        self.hoister = hoister
        self.locals = set(locals_)
        self.used: set[str] = set()
        self.results: dict[str, str] = {}  # a reduction kernel's result (a local) -> its call
        self.printer = KernelPrinter(rule, set(locals_), names)

    def doprint(self, expr: sp.Basic) -> str:
        printed = frozenset(self.names.get(n, n) for n in self.locals)
        types = Types(arrays=printed, elements=printed, names=self.names)
        try:
            tree = kernel_tree(expr, types)
        except NotImplementedError as exc:
            raise BackendError(self.rule, "fused", str(exc)) from None
        tree, used = hoist_tree(tree, self.hoister)
        self.used |= used
        return OpPrinter(self.printer, {}, {}, values=self.results).expr(tree)

    def name_of(self, symbol: sp.Symbol) -> str:
        name = base(symbol)
        return self.names.get(name, name)

    def constant(self, value) -> str:
        name = self.hoister.hoist(sp.sympify(value), ())
        self.used.add(name)
        return name


@dataclasses.dataclass(frozen=True)
class StepValue:
    """A line of ``prepare_<case>``: ``name = code``."""

    name: str
    code: str


@dataclasses.dataclass
class Kernel:
    name: str
    kind: str  # "reduce" or "update"; or "loop": the element loop an update kernel is made from
    doc: str
    arrays: list[str]  # array parameters (without the trailing underscore)
    loads: list[tuple[str, str, str]]  # (array, flag under which it is kept or '', zero to use otherwise)
    args: list[str]  # hoisted parameters
    body: list[str]  # loop body lines
    stores: list[tuple[str, str]]  # (array, flag that says it is allocated, '' if always)
    accumulate: str = ""  # reduce: "sum" or "max"
    value: str = ""  # reduce: the printed element value
    #: (name, index) of the once-per-step values read from the step's packed array ``k_``: one argument
    #: instead of many (a Numba call costs about 0.15 us per argument)
    packed: list[tuple[str, int]] = dataclasses.field(default_factory=list)

    #: update kernels: each array's column in ``table``
    columns: dict[str, int] = dataclasses.field(default_factory=dict)
    #: update kernels: the per-tensor states (one value each), the per-tensor code, the reductions it calls
    tensor_loads: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # (state, flag, zero)
    tensor_code: list[str] = dataclasses.field(default_factory=list)
    reductions: list["Kernel"] = dataclasses.field(default_factory=list)

    @property
    def loop(self) -> list[str]:
        """The element loop's body (update kernels), indented relative to the loop."""
        out = []
        for n, flag, zero in self.loads:
            out.append(f"{n} = {n}_[i_] if {flag} else {zero}" if flag else f"{n} = {n}_[i_]")
        out += self.body
        for n, flag in self.stores:
            out += [f"if {flag}:", f"    {n}_[i_] = {n}"] if flag else [f"{n}_[i_] = {n}"]
        return out

    @property
    def flags(self) -> list[str]:
        """The conditions: arguments of the kernel's factory, constants in the compiled loop."""
        return [a for a in self.args if a.startswith("b_")]

    @property
    def values(self) -> list[str]:
        """Value arguments: the per-tensor ones (the once-per-step ones come packed in ``k_``)."""
        packed = {n for n, _ in self.packed}
        return [a for a in self.args if not a.startswith("b_") and a not in packed]

    @property
    def params(self) -> list[str]:
        if self.kind == "update":
            return ["rows", "bounds", "table", "k_"]
        return [f"{n}_" for n in self.arrays] + (["k_"] if self.packed else []) + self.values

    @property
    def width(self) -> int:
        """Update kernels: the columns of a row of ``table`` that the kernel reads."""
        return max(self.columns.values()) + 1

    def call(self) -> str:
        if self.kind == "update":  # compiled for the arrays' dtype too; the threads are drive()'s
            k_ = "k_" if self.packed else "np.zeros(1, dt)"
            return f"drive({self.name}({', '.join(['dt'] + self.flags)}).address, rows, bounds, table, {k_})"
        return f"{self.name}({', '.join(self.flags)})({', '.join(self.params)})"


class FusedBackend(Backend):
    """Writes ``generated/fused/<module>.py``: per case, its once-per-step values and its kernels."""

    name = "fused"
    kernels = True

    def __init__(self) -> None:
        super().__init__()
        self.numpy = NumPyBackend()
        self.env.filters["add_underscore"] = lambda name: f"{name}_"

    def context(self, program: Program) -> dict:
        from optforge.compiler.passes.scope import scopes_of

        scopes = scopes_of(program)
        p = self.numpy.make_printer(program, scopes)
        functions = []
        for i, case in enumerate(program.cases):
            for section in case.sections:
                if section.kind == SectionKind.TENSOR:
                    functions.append(self.tensor_function(program, scopes, p, i, case, section))
        return {
            "rule": program.rule,
            "module": program.module,
            "source": program.file,
            "title": program.title,
            "functions": functions,
        }

    def tensor_function(self, program, scopes, p, index, case, section: Section) -> dict:
        """A case's loop over the tensors as one row kernel, which ``drive`` runs on every row of its table:
        a tensor (or, in the steps that need no per-tensor value, where the case writes no per-tensor state,
        a part of one): its reductions and per-tensor code, printed as scalar code, then the element loop."""
        elements = {n for n, s in scopes.items() if s == Scope.ELEMENT}
        per_tensor = {n for n, s in scopes.items() if s == Scope.TENSOR}
        hoister = Invariants(
            boolean_names(program), {n for n, s in scopes.items() if s >= Scope.TENSOR}, p.names
        )
        persisting = {s.name: s for s in program.states if s.persists}
        # where each optional state is stored, in this case (the flags its condition decides, decided)
        stored = {n: given(s.allocated_when, case.condition) for n, s in persisting.items()}
        kp = KernelCode(program.rule, elements, hoister, self.names, stored)  # the element statements
        scalar = KernelCode(program.rule, elements | per_tensor, hoister, self.names, stored)  # per tensor
        states = self.section_states(program, section)
        arrays = ["w", "g"] + [s for s in states if persisting[s].scope == Scope.ELEMENT]
        tensor_code: list[str] = []  # the per-tensor code (scalar Numba), in order
        element: list[tuple[Assign, list[str], set[str]]] = []  # statement, kernel lines, hoisted names used

        def flush() -> None:  # the per-tensor values hoisted so far are computed here
            tensor_code.extend(self.scalar_value(h, scalar) for h in hoister.flush())

        kernels: list[Kernel] = []
        last_label = None
        for a in section.body:
            comment = ""
            if a.equation is not None and a.label != last_label:
                comment, last_label = a.label, a.label
            try:
                if a.scope == Scope.ELEMENT:
                    kp.used = set()
                    code = f"{kp.name_of(a.lhs)} = {kp.doprint(a.expr)}"
                    element.append((a, ([f"# {comment}"] if comment else []) + [code], set(kp.used)))
                    flush()  # computed here: they read the per-tensor values of this point
                    continue
                tensor_code += [f"# {comment}"] if comment else []
                if a.role == Role.REDUCE and _is_size(a.expr):  # a row is a whole tensor: no kernel
                    marker = sp.Symbol(f"size{len(kernels)}_")
                    scalar.locals.add(marker.name)
                    scalar.results[marker.name] = "dt(hi_ - lo_)"
                    value = scalar.doprint(
                        a.expr.replace(lambda x: isinstance(x, Reduction) and x.from_shape, lambda x: marker)
                    )
                elif a.role == Role.REDUCE:  # its kernel, called where the value is needed
                    kernel = self.reduction(program, index, len(kernels), a, element, kp, hoister, arrays)
                    kernels.append(kernel)
                    flush()
                    marker = sp.Symbol(f"red{len(kernels)}_")  # the kernel's result, in the per-tensor code
                    scalar.locals.add(marker.name)
                    scalar.results[marker.name] = f"dt({reduction_call(kernel, hoister)})"
                    value = scalar.doprint(
                        a.expr.replace(
                            lambda x: isinstance(x, Reduction) and x.over == Over.TENSOR, lambda x: marker
                        )
                    )
                else:
                    value = scalar.doprint(a.expr)
                tensor_code.append(f"{scalar.name_of(a.lhs)} = {value}")
            except BackendError as exc:
                if a.equation is None or exc.equation is not None:
                    raise
                raise BackendError(
                    program.rule, self.name, exc.node, equation=program.written(a.equation)["equation"]
                ) from None
        update = self.update_kernel(program, index, element, kp, hoister, arrays, persisting)
        flush()
        step_names = {h.name for h in hoister.step}
        reductions = list(kernels)
        read = {n for k in reductions + [update] for n in k.arrays}
        tensor_loads = [self.load(s, scalar) for s in states if persisting[s].scope == Scope.TENSOR]
        used = {n for k in kernels + [update] for n in k.args} | scalar.used
        used |= {x for _, flag, zero in tensor_loads for x in (flag, zero) if x}
        columns = {n: i for i, n in enumerate(["w", "g"] + states)}
        kernel = dataclasses.replace(
            update,
            name=f"_update_{index}",
            kind="update",
            doc="each row's tensor, or part of a tensor: its per-tensor values, then every element, in place",
            arrays=[n for n in arrays if n in read],
            args=sorted((n for n in used if n in step_names), key=hoister.sort_key),
            columns=columns,
            tensor_loads=tensor_loads,
            tensor_code=tensor_code,
            reductions=reductions,
        )
        kernels.append(kernel)
        # threads may share a tensor, each one a contiguous part, where the per-tensor code writes no
        # per-tensor state, in the steps whose update reads no per-tensor value (clipnorm's norm: only
        # where clipnorm is given): then the guards of every per-tensor value the loop reads are false
        tensor_values = [v for v in update.values if v not in step_names]
        guards = [h.guard for h in hoister.items if h.name in tensor_values]
        splittable = not any(
            a.role in (Role.STATE, Role.PARAM) and a.scope == Scope.TENSOR for a in section.body
        )
        # a guard that reads a per-tensor value (where(norm > 1, ...)) cannot be tested once per step
        per_step = all(
            scopes.get(getattr(x, "option", None) or base(x), Scope.CONST) <= Scope.GLOBAL
            for guard in guards
            for x in guard.free_symbols
        )
        if not splittable or not per_step or any(g is sp.true for g in guards):
            split = None  # never: each tensor whole
        else:
            split = p.doprint(sp.Or(*guards)) if guards else ""  # "": always
        # the once-per-step values the kernels read, packed into one array by prepare
        packed = sorted({v for k in kernels for v in k.values if v in step_names}, key=hoister.sort_key)
        for k in kernels:
            k.packed = [(v, packed.index(v)) for v in k.values if v in step_names]
        for k in reductions:  # the calls printed into the per-tensor code had these arguments
            assert reduction_call(k, hoister) == f"{k.name[1:]}({', '.join(k.params)})", k.name
        # what run_<case> takes from prepare_<case>: the kernels' arguments and what the split test reads
        split_reads = _option_names(sp.Or(*guards), self.names) if split else set()
        read = {a for k in kernels for a in k.flags + k.values} | split_reads
        candidates = section_scalars(program, scopes, section, self.names) + [h.name for h in hoister.step]
        unpack = [n for n in candidates if n in read] + (["k_"] if packed else [])
        return {
            "name": fused_name(index),
            "case": "" if case.condition is sp.true else p.doprint(case.condition),
            "states": states,
            "scalars": section_scalars(program, scopes, section, self.names),
            "step": [StepValue(h.name, self.step_code(h, p)) for h in hoister.step],
            "unpack": unpack,
            "split_reads": _reads([n for n in unpack if n in split_reads], unpack, "step"),
            "packed": packed,
            "kernels": kernels,
            "kernel": kernel,
            "split": split,
            "index": index,
        }

    def step_code(self, h: Hoisted, p: ExprPrinter) -> str:
        """A once-per-step value as Python computes it (``dt`` is the kernels' dtype), by the NumPy printer."""
        if h.boolean:
            return f"bool({p.doprint(h.expr)})"
        code = f"dt({p.doprint(h.expr)})"
        if h.guard is not sp.true:  # e.g. an option's value, only where the option is given
            code = f"{code} if {p.doprint(h.guard)} else dt(0)"
        return code

    def scalar_value(self, h: Hoisted, scalar: KernelCode) -> str:
        """A per-tensor value as a kernel computes it (``dt`` is the kernel's dtype): what the NumPy
        module computes in Python, the same operations in the same dtype."""
        value = scalar.doprint(h.expr)
        if h.name.startswith("b_"):
            return f"{h.name} = {value}"
        if h.guard is sp.true:
            return f"{h.name} = dt({value})"
        return f"{h.name} = dt({value}) if {scalar.doprint(h.guard)} else dt(0)"

    def closure(self, element, symbols) -> list[tuple[Assign, list[str], set[str]]]:
        """The element statements (in order) that the given symbols are computed from."""
        needed, todo = set(), list(symbols)
        defs = {a.lhs: (a, c, u) for a, c, u in element}
        while todo:
            s = todo.pop()
            if s in defs and s not in needed:
                needed.add(s)
                todo += list(defs[s][0].expr.free_symbols)
        return [e for e in element if e[0].lhs in needed]

    def inputs(self, statements, extra: set, arrays: list[str]) -> list[str]:
        """Arrays read at their value from the start of the step."""
        read = set(extra)
        for a, _, _ in statements:
            read |= a.expr.free_symbols
        return [n for n in arrays if sp.Symbol(n) in read]

    def reduction(self, program, index, k, a: Assign, element, kp: KernelCode, hoister, arrays):
        expr = a.expr
        red = next(
            x for x in sp.preorder_traversal(expr) if isinstance(x, Reduction) and x.over == Over.TENSOR
        )
        (arg,) = red.args
        statements = self.closure(element, arg.free_symbols)
        kp.used = set()
        value = kp.doprint(arg)
        used = set(kp.used).union(*(u for _, _, u in statements))
        names = self.inputs(statements, arg.free_symbols, arrays)
        loads = [self.load(n, kp) for n in names]
        used |= _load_names(loads)
        name = f"_reduce_{index}_{k}"
        kernel = Kernel(
            name=name,
            kind="reduce",
            doc=f"{a.target}: {red.accumulate} of {arg} over the tensor",
            arrays=names,
            loads=loads,
            args=sorted(used, key=kp.hoister.sort_key),
            body=[c for _, code, _ in statements for c in code],
            stores=[],
            accumulate=red.accumulate,
            value=value,
        )
        return kernel

    def load(self, name: str, kp: KernelCode) -> tuple[str, str, str]:
        """(array, flag, zero): an optional state is read only where it is kept (flag), else it is zero."""
        stored = kp.stored.get(name, sp.true)
        if stored is sp.true:
            return name, "", ""
        flag = "False" if stored is sp.false else kp.hoister.hoist(stored, ())  # False: not in this case
        return name, flag, kp.constant(0)

    def update_kernel(self, program, index, element, kp, hoister, arrays, persisting) -> Kernel:
        written = {a.target for a, _, _ in element if a.role in (Role.STATE, Role.PARAM)}
        used = set().union(*(u for _, _, u in element)) if element else set()
        names = self.inputs(element, {sp.Symbol(n) for n in written}, arrays)
        loads = [self.load(n, kp) for n in names]
        stores = [(n, flag) for n, flag, _ in loads if n in written]
        used |= _load_names(loads)
        return Kernel(
            name=f"_loop_{index}",
            kind="loop",
            doc="the update of every element, in place",
            arrays=names,
            loads=loads,
            args=sorted(used, key=kp.hoister.sort_key),
            body=[c for _, code, _ in element for c in code],
            stores=stores,
        )


def _load_names(loads: list[tuple[str, str, str]]) -> set[str]:
    """The hoisted names that optional loads read: their flags (not ``False``, a state that this case never
    stores) and their zeros."""
    return {flag for _, flag, _ in loads if flag not in ("", "False")} | {
        zero for _, _, zero in loads if zero
    }


def reduction_call(kernel: Kernel, hoister: Invariants) -> str:
    """The call of a reduction kernel from the update kernel: its arrays, the packed once-per-step values
    (``k_``) where it reads any, and its per-tensor values (all hoisted before the kernel was made)."""
    step = {h.name for h in hoister.step}
    values = [a for a in kernel.args if not a.startswith("b_")]
    params = [f"{n}_" for n in kernel.arrays]
    params += (["k_"] if any(v in step for v in values) else []) + [v for v in values if v not in step]
    return f"{kernel.name[1:]}({', '.join(params)})"


def _option_names(expr: sp.Basic, names: dict[str, str]) -> set[str]:
    """The names (as printed) of the values a condition reads (``Given(x)`` reads the option ``x``)."""
    read = {getattr(s, "option", None) or base(s) for s in expr.free_symbols}
    return {names.get(n, n) for n in read}


def _reads(names: list[str], order: list[str], tuple_name: str) -> str:
    """``a, b = step[0], step[3]``: the names read from a tuple of ``order``."""
    return f"{', '.join(names)} = {', '.join(f'{tuple_name}[{order.index(n)}]' for n in names)}"


def _is_size(expr: sp.Basic) -> bool:
    """Whether a per-tensor reduction is known from the shape (``size``: the row's length)."""
    return any(isinstance(x, Reduction) and x.from_shape for x in sp.preorder_traversal(expr))
