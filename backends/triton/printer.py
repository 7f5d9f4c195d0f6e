"""The Triton path: each case of a rule as a few GPU kernels, each launched once per step over every tensor.

The program is the one the fused Numba path compiles (``backends/fused``): a case's loop over the tensors,
with the passes over all tensors (``reduce`` sections) before it. The tensors of one dtype are cut into
chunks (``BLOCK`` elements each, 1024 by default); a *chunk table* says, per chunk, its tensor, start and
length, and a *tensor table* holds, per tensor, the addresses of ``w``, ``g`` and each state, and where
its chunks are. The kernels of a case, in order (``phases``):

* a reduction over one tensor (NovoGrad's layer norm, ``clipnorm``'s norm): ``_partial_*``, one program
  per chunk, replays the per-element statements the reduced value reads and writes the chunk's partial
  sum (float64); ``_tensor_*``, one program per tensor, adds its chunks' partial sums in order, then runs
  the per-tensor code that follows the reduction (NovoGrad's ``v``: per-tensor state written here);
* a reduction over all tensors (``global_clipnorm``): ``_partial_*`` as above, then ``_global_*``, one
  program, adds every partial sum;
* ``_update_*``: one program per chunk reads each element once, runs every per-element statement and
  writes the parameter and the per-element states in place.

Values cross from one kernel to the next in device buffers (per-tensor values ``tvals``, values over all
tensors ``gvals``, float64): nothing returns to the host during a step. Once-per-step values are computed
in Python (``prepare_*``, by the NumPy printer, rounded to the compute dtype) and reach the kernels in one
small tensor ``k_``; static conditions are ``tl.constexpr`` flags (``b_*``), so Triton compiles a kernel
per combination with the tests folded away. Per-element arithmetic is the NumPy module's, in its order,
in the compute dtype (float32 for float32/bfloat16/float16 parameters, float64 for float64): no literal
number appears in a kernel (each is a hoisted ``c_*`` of the compute dtype). Parameters are rounded to
their own dtype after each statement that writes them, as the torch path's in-place updates do.
"""

from __future__ import annotations

import dataclasses

import sympy as sp
from sympy.printing.precedence import PRECEDENCE

from optforge.compiler.dsl import Reduction
from optforge.compiler.errors import BackendError
from optforge.compiler.ir import Assign, Program, Role, Scope, SectionKind, base
from optforge.compiler.passes import conditions
from optforge.compiler.passes.hoist import Hoisted, Invariants
from optforge.compiler.passes.typing import boolean_names

from ..base import Backend, fused_name, section_scalars
from ..fused.printer import KernelPrinter, StepValue
from ..numpy.printer import NumPyBackend


class TritonPrinter(KernelPrinter):
    """Triton code inside a kernel: per-element names are blocks, per-tensor names 0-d values; everything
    that reads neither is hoisted (a ``c_*`` value of ``k_`` or a ``b_*`` constexpr flag)."""

    backend = "triton"
    # sqrt, max and min from triton_support: IEEE sqrt in float32 too, NaN propagated as NumPy does
    functions = {
        "sqrt": ("fsqrt", ""),
        "Abs": ("tl.abs", ""),
        "exp": ("tl.exp", ""),
        "log": ("tl.log", ""),
        "erf": ("tl.math.erf", ""),
        "sign": ("fsign", ""),
        "Max": ("fmax", ""),
        "Min": ("fmin", ""),
    }

    def __init__(self, rule, arrays, hoister, names, step_names) -> None:
        super().__init__(rule, arrays, hoister, names)
        self.step_names = step_names  # a callable: the names hoisted once per step so far

    def _print_Pow(self, expr: sp.Pow, rational: bool = False) -> str:
        b, e = expr.args
        sqrt = self.functions["sqrt"][0]
        if e == 2:  # NumPy's x**2 is x*x
            x = self.parenthesize(b, PRECEDENCE["Mul"], strict=True)
            return f"({x} * {x})"
        if e == sp.S.Half:
            return self.call(sqrt, self._print(b))
        if e == -sp.S.Half:
            return f"{self.constant(1)} / {self.call(sqrt, self._print(b))}"
        if e == -1:
            return f"{self.constant(1)} / {self.parenthesize(b, PRECEDENCE['Pow'])}"
        self.fail(expr)  # Triton has no power operator; no rule needs one in a kernel yet

    def _print_clip(self, expr) -> str:  # np.clip(x, lo, hi) is minimum(maximum(x, lo), hi)
        x, lo, hi = (self._print(a) for a in expr.args)
        return f"fmin(fmax({x}, {lo}), {hi})"

    def flag(self, cond) -> tuple[str, bool]:
        """A condition that reads no array of this printer, hoisted: (its name, whether it is a constexpr
        flag computed once per step; else a 0-d value computed in the kernel)."""
        name = self._print(cond)
        return name, name in self.step_names()

    def _print_Piecewise(self, expr) -> str:
        """Static conditions (constexpr flags) as Python's conditional expression, which Triton folds at
        compile time; the others as ``tl.where``."""
        pieces = list(expr.args)
        if pieces[-1][1] is not sp.true:
            self.fail(expr)
        printed = []
        static_before: list = []
        for value, cond in pieces[:-1]:
            saved = self.guards
            parts = cond.args if isinstance(cond, sp.And) else (cond,)
            static = [c for c in parts if not self.is_array(c)]
            dynamic = [c for c in parts if self.is_array(c)]
            self.guards = saved + tuple(static) + tuple(sp.Not(c) for c in static_before)
            constexpr, where = [], []
            if static:
                name, is_step = self.flag(sp.And(*static))
                (constexpr if is_step else where).append(name)
            where += [self._print(c) for c in dynamic]
            printed.append((self._print(value), constexpr, where))
            self.guards = saved
            if not dynamic:  # where a later piece is evaluated, this condition failed
                static_before.append(cond)
        saved = self.guards
        self.guards = saved + tuple(sp.Not(c) for c in static_before)
        out = self._print(pieces[-1][0])
        self.guards = saved
        for value, constexpr, where in reversed(printed):
            inner = value
            if where:
                inner = f"tl.where({' & '.join(where)}, {value}, {out})"
            out = f"({inner} if {constexpr[0]} else {out})" if constexpr else inner
        return out

    def _logic(self, expr, array_fn: str, word: str) -> str:
        if not self.is_array(expr):
            return "(" + f" {word} ".join(self._print(a) for a in expr.args) + ")"
        if any(not self.is_array(a) for a in expr.args):
            raise BackendError(self.rule, self.backend, f"a condition mixing flags and values: {expr}")
        op = " & " if word == "and" else " | "
        return "(" + op.join(self._print(a) for a in expr.args) + ")"

    def _print_Not(self, expr) -> str:
        if self.is_array(expr):
            return f"(~{self._print(expr.args[0])})"
        return f"(not {self._print(expr.args[0])})"


@dataclasses.dataclass
class Kernel:
    """One ``@triton.jit`` function of a case: what it reads and writes, its lines printed."""

    name: str
    kind: str  # "partial" (per chunk), "tensor" (per tensor), "global" (one program), "update" (per chunk)
    doc: str
    body: list[str] = dataclasses.field(default_factory=list)
    #: the flag under which the kernel is launched at all ('' always)
    when: str = ""
    #: partial, tensor, global: how partial results combine ("sum" or "max"); partial: the value reduced
    accumulate: str = ""
    value: str = ""
    #: partial: the per-tensor (or global) name of the reduction's result
    result: str = ""
    #: while printing: hoisted names the lines read, per-tensor and global names they read
    used: set[str] = dataclasses.field(default_factory=set)
    reads: set[str] = dataclasses.field(default_factory=set)
    #: partial, update: the arrays read per element; update: those written
    arrays: list[str] = dataclasses.field(default_factory=list)
    written: list[str] = dataclasses.field(default_factory=list)
    #: tensor, global: the names it computes, in order (kept in tvals or gvals for the later kernels)
    assigned: list[str] = dataclasses.field(default_factory=list)

    # filled in by CaseWriter.finish, once every name is hoisted
    flags: list[str] = dataclasses.field(default_factory=list)  # constexpr parameters (b_ names)
    packed_names: list[str] = dataclasses.field(default_factory=list)
    packed: list[tuple[str, int]] = dataclasses.field(default_factory=list)  # (name, index in k_)
    loads: list[str] = dataclasses.field(default_factory=list)  # per-tensor and global values, states
    prelude: list[str] = dataclasses.field(default_factory=list)  # per-tensor values hoisted
    elements: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (array, flag or '')
    stores: list = dataclasses.field(default_factory=list)

    @property
    def grid(self) -> str:
        return {"partial": "chunks", "update": "chunks", "tensor": "tensors", "global": "one"}[self.kind]


class TritonBackend(Backend):
    """Writes ``generated/triton/<module>.py``: per case, its once-per-step values and its kernels."""

    name = "triton"

    def __init__(self) -> None:
        super().__init__()
        self.numpy = NumPyBackend()

    def context(self, program: Program) -> dict:
        from optforge.compiler.passes.scope import scopes_of

        scopes = scopes_of(program)
        p = self.numpy.make_printer(program, scopes)
        self.numpy._program = program
        functions = []
        for i, case in enumerate(program.cases):
            functions.append(CaseWriter(self, program, scopes, p, i, case).write())
        return {
            "rule": program.rule,
            "module": program.module,
            "source": program.file,
            "title": program.title,
            "functions": functions,
        }


def _reduction(expr: sp.Basic, over: str) -> Reduction | None:
    found = [x for x in sp.preorder_traversal(expr) if isinstance(x, Reduction) and x.over == over]
    return found[0] if found else None


class CaseWriter:
    """The kernels of one case (see the module's docstring for their order)."""

    def __init__(self, backend: TritonBackend, program: Program, scopes, p, index: int, case) -> None:
        self.backend, self.program, self.scopes, self.p, self.index = backend, program, scopes, p, index
        self.case = case
        self.names = backend.names
        self.tensor_section = next(s for s in case.sections if s.kind == SectionKind.TENSOR)
        self.reduce_sections = [s for s in case.sections if s.kind == SectionKind.REDUCE]
        self.elements = {n for n, s in scopes.items() if s == Scope.ELEMENT}
        self.per_tensor = {n for n, s in scopes.items() if s == Scope.TENSOR}
        # reductions over all tensors: computed on the device, read by the kernels like per-tensor values
        self.global_names = {
            a.target for s in self.reduce_sections for a in s.body if _reduction(a.expr, "global") is not None
        }
        self.hoister = Invariants(
            boolean_names(program), self.elements | self.per_tensor | self.global_names, p.names
        )
        step = lambda: {h.name for h in self.hoister.step}  # noqa: E731
        self.kp = TritonPrinter(program.rule, set(self.elements), self.hoister, self.names, step)
        self.sp = TritonPrinter(
            program.rule, self.elements | self.per_tensor | self.global_names, self.hoister, self.names, step
        )
        self.persisting = {s.name: s for s in program.states if s.persists}
        states = backend.section_states(program, self.tensor_section)
        self.element_states = [s for s in states if self.persisting[s].scope == Scope.ELEMENT]
        self.tensor_states = [s for s in states if self.persisting[s].scope == Scope.TENSOR]
        # the tensor table's columns: first chunk, number of chunks, then the addresses
        self.columns = {n: 2 + i for i, n in enumerate(["w", "g"] + states)}  # a work item's order
        self.tslots: dict[str, int] = {}  # per-tensor values kept in tvals, by printed name
        self.gslots: dict[str, int] = {}  # values over all tensors kept in gvals
        self.per_tensor_code: dict[str, tuple[str, set[str]]] = {}  # hoisted name -> (line, names it uses)
        self.skipped: dict[str, str] = {}  # a value whose kernel may be skipped -> the flag that runs it

    # -- printing ------------------------------------------------------------------------------

    def fail_at(self, a: Assign, exc: BackendError):
        if a.equation is None or exc.equation is not None:
            raise exc
        raise BackendError(
            self.program.rule,
            self.backend.name,
            exc.node,
            equation=self.program.written(a.equation)["equation"],
        ) from None

    def element_line(self, a: Assign) -> tuple[str, set[str]]:
        """A per-element statement; a parameter is rounded to its own dtype (``W_DT``) as it is written."""
        self.kp.used = set()
        try:
            value = self.kp.doprint(a.expr)
        except BackendError as exc:
            self.fail_at(a, exc)
        if a.role == Role.PARAM:
            value = f"({value}).to(W_DT).to(DT)"
        return f"{self.kp.name_of(a.lhs)} = {value}", set(self.kp.used)

    def scalar_line(self, a: Assign, expr: sp.Basic | None = None) -> tuple[str, set[str]]:
        """A per-tensor (or over-all-tensors) statement, as 0-d Triton values."""
        self.sp.used = set()
        try:
            value = self.sp.doprint(a.expr if expr is None else expr)
        except BackendError as exc:
            self.fail_at(a, exc)
        return f"{self.sp.name_of(a.lhs)} = {value}", set(self.sp.used)

    def hoisted_line(self, h: Hoisted) -> tuple[str, set[str]]:
        """A per-tensor hoisted value, computed once per program where it is read."""
        if h.name not in self.per_tensor_code:
            self.sp.used = set()
            value = self.sp.doprint(h.expr)
            if h.guard is not sp.true and not h.boolean:
                value = f"{value} if {self.sp.doprint(h.guard)} else 0.0"
            self.per_tensor_code[h.name] = (f"{h.name} = {value}", set(self.sp.used))
        return self.per_tensor_code[h.name]

    # -- the phases ------------------------------------------------------------------------------

    def events(self) -> list[tuple[str, Assign, list[Assign]]]:
        """In order: ("tensor-reduce" | "global-reduce" | "tensor-code", statement, the per-element
        statements it may read), reductions over one tensor computed once (a pass over all tensors replays
        those it reads: the first computes it)."""
        out, seen = [], set()
        for section in self.reduce_sections:
            element = [a for a in section.body if a.scope == Scope.ELEMENT]
            for a in section.body:
                if a.scope == Scope.ELEMENT:
                    continue
                if _reduction(a.expr, "global") is not None:
                    out.append(("global-reduce", a, element))
                elif _reduction(a.expr, "tensor") is not None:
                    if a.lhs not in seen:
                        out.append(("tensor-reduce", a, element))
                        seen.add(a.lhs)
                else:
                    out.append(("tensor-code", a, element))
        element = [a for a in self.tensor_section.body if a.scope == Scope.ELEMENT]
        for a in self.tensor_section.body:
            if a.scope == Scope.ELEMENT:
                continue
            if a.scope != Scope.TENSOR:
                raise BackendError(
                    self.program.rule, "triton", f"a {a.scope.word} statement in the tensor loop"
                )
            if _reduction(a.expr, "tensor") is not None:
                if a.lhs not in seen:
                    out.append(("tensor-reduce", a, element))
                    seen.add(a.lhs)
            else:
                out.append(("tensor-code", a, element))
        return out

    def closure(self, element: list[Assign], symbols) -> list[Assign]:
        needed, todo = set(), list(symbols)
        defs = {a.lhs: a for a in element}
        while todo:
            s = todo.pop()
            if s in defs and s not in needed:
                needed.add(s)
                todo += list(defs[s].expr.free_symbols)
        return [a for a in element if a.lhs in needed]

    def write(self) -> dict:
        kernels: list[Kernel] = []
        tensor_kernel: Kernel | None = None  # the per-tensor kernel that per-tensor code joins, if open
        k = 0
        for kind, a, element in self.events():
            if kind == "tensor-code":
                if tensor_kernel is None:
                    tensor_kernel = self.tensor_kernel(f"_tensor_{self.index}_{k}", "tensor", None, "")
                    kernels.append(tensor_kernel)
                    k += 1
                self.add_tensor_code(tensor_kernel, a)
                continue
            over = "global" if kind == "global-reduce" else "tensor"
            red = _reduction(a.expr, over)
            partial = self.partial_kernel(f"_partial_{self.index}_{k}", a, red, element)
            finish = self.tensor_kernel(f"_{over}_{self.index}_{k}", over, a, red.accumulate)
            kernels += [partial, finish]
            self.add_tensor_code(finish, a, red)
            tensor_kernel = finish if over == "tensor" else None
            k += 1
        update = self.update_kernel()
        kernels.append(update)
        # a kernel that only combines a reduction's partial results is skipped with it where the step does
        # not need the reduction: the kernels that read the value then read its value there, 0
        for partial, combine in zip(kernels, kernels[1:]):
            if partial.kind == "partial" and partial.when and combine.assigned == [partial.result]:
                combine.when = partial.when
                self.skipped[partial.result] = partial.when
        for kern in kernels:
            self.finish(kern)
        step = [StepValue(h.name, step_code(h, self.p)) for h in self.hoister.step]
        values = [h.name for h in self.hoister.step if not h.boolean]
        for kern in kernels:
            kern.packed = [(n, values.index(n)) for n in kern.packed_names]
        scalars = []
        for s in self.reduce_sections + [self.tensor_section]:
            for n in section_scalars(self.program, self.scopes, s, self.names):
                if n not in scalars and n not in self.global_names:
                    scalars.append(n)
        return {
            "name": fused_name(self.index),
            "case": "" if self.case.condition is sp.true else self.p.doprint(self.case.condition),
            "arrays": ["w", "g"] + [n for n in self.columns if n not in ("w", "g")],
            "tensor_states": self.tensor_states,
            "scalars": scalars,
            "step": step,
            "flags": [h.name for h in self.hoister.step if h.boolean],
            "values": values,
            "kernels": kernels,
            "ncol": 2 + len(self.columns),
            "columns": self.columns,
            "tslots": len(self.tslots),
            "gslots": len(self.gslots),
            "index": self.index,
        }

    # -- kernels -----------------------------------------------------------------------------------

    def partial_kernel(self, name: str, a: Assign, red: Reduction, element: list[Assign]) -> Kernel:
        """One program per chunk: the chunk's partial sum (or maximum) of the reduced value."""
        guard = sp.true
        expr = a.expr
        if isinstance(expr, sp.Piecewise):
            (expr, guard), _ = expr.args
        static, dynamic = (
            conditions.split(guard, self.sp.arrays) if guard is not sp.true else (sp.true, sp.true)
        )
        if dynamic is not sp.true or expr != red:
            raise BackendError(self.program.rule, "triton", f"a reduction the kernels cannot take: {a.expr}")
        (arg,) = red.args
        statements = self.closure(element, arg.free_symbols)
        body, used = [], set()
        for s in statements:
            line, u = self.element_line(s)
            body.append(line)
            used |= u
        self.kp.used = set()
        self.kp.guards = ()
        value = self.kp.doprint(arg)
        used |= self.kp.used
        when = "" if static is sp.true else self.hoister.hoist(static, ())
        if when and a.expr.args[1][0] != 0:  # the reduction's value where it is not computed: only 0 here
            raise BackendError(
                self.program.rule, "triton", f"a reduction whose value is not 0 where skipped: {a.expr}"
            )
        return Kernel(
            name=name,
            kind="partial",
            doc=f"{a.target}: each chunk's {red.accumulate} of {arg}",
            body=body,
            when=when,
            accumulate=red.accumulate,
            value=value,
            result=self.sp.name_of(a.lhs),
            used=used,
            arrays=self.inputs(statements, arg.free_symbols),
        )

    def inputs(self, statements: list[Assign], extra) -> list[str]:
        """The arrays read at their value from the start of the step."""
        read = set(extra)
        for a in statements:
            read |= a.expr.free_symbols
        return [n for n in ["w", "g"] + self.element_states if sp.Symbol(n) in read]

    def tensor_kernel(self, name: str, kind: str, a: Assign | None, accumulate: str) -> Kernel:
        """A kernel of one program per tensor (or one in all, ``global``): a reduction's partial results
        combined, then the per-tensor code that follows it."""
        doc = f"{a.target}: the partial results of the chunks combined" if a else "the per-tensor code"
        if kind == "tensor" and a is not None:
            doc += ", then the per-tensor code that follows"
        return Kernel(name=name, kind=kind, doc=doc, accumulate=accumulate)

    def add_tensor_code(self, kern: Kernel, a: Assign, red: Reduction | None = None) -> None:
        """A per-tensor statement (or a reduction's result: ``total``, the combined partial results)."""
        if a.equation is not None and a.label:
            kern.body.append(f"# {a.label}")
        if red is not None:
            marker = sp.Symbol("total_")
            self.sp.arrays = self.sp.arrays | {marker.name}
            self.sp.results[marker.name] = "total"
            line, used = self.scalar_line(a, a.expr.replace(lambda x: x == red, lambda x: marker))
        else:
            line, used = self.scalar_line(a)
        kern.body.append(line)
        kern.used |= used
        kern.reads |= {base(s) for s in a.expr.free_symbols}
        name = self.sp.name_of(a.lhs)
        if name not in kern.assigned:
            kern.assigned.append(name)

    def update_kernel(self) -> Kernel:
        element = [a for a in self.tensor_section.body if a.scope == Scope.ELEMENT]
        body, used = [], set()
        last_label = None
        for a in element:
            if a.equation is not None and a.label != last_label:
                body.append(f"# {a.label}")
                last_label = a.label
            line, u = self.element_line(a)
            body.append(line)
            used |= u
        written = {a.target for a in element if a.role in (Role.STATE, Role.PARAM)}
        return Kernel(
            name=f"_update_{self.index}",
            kind="update",
            doc="every element of the chunk, read once, updated in place",
            body=body,
            used=used,
            arrays=self.inputs(element, {sp.Symbol(n) for n in written}),
            written=[n for n in ["w"] + self.element_states if n in written],
        )

    def finish(self, kern: Kernel) -> None:
        """What a kernel loads and stores, now that every name it uses is hoisted."""
        items = {h.name: h for h in self.hoister.items}
        used = set(kern.used)
        prelude = []
        # per-tensor hoisted values, in the order they were hoisted, with the step values they read
        pending = [n for n in used if n in items and items[n].per_tensor]
        done: set[str] = set()
        reads: set[str] = set(kern.reads)
        while pending:
            pending = sorted(set(pending) - done, key=self.hoister.sort_key)
            for n in pending:
                line, u = self.hoisted_line(items[n])
                used |= u
                done.add(n)
                reads |= {
                    base(s) for s in items[n].expr.free_symbols | sp.sympify(items[n].guard).free_symbols
                }
            pending = [n for n in used if n in items and items[n].per_tensor and n not in done]
        prelude = [self.per_tensor_code[n][0] for n in sorted(done, key=self.hoister.sort_key)]
        step_items = {h.name: h for h in self.hoister.step}
        kern.flags = sorted(
            (n for n in used if n in step_items and step_items[n].boolean), key=self.hoister.sort_key
        )
        kern.packed_names = sorted(
            (n for n in used if n in step_items and not step_items[n].boolean), key=self.hoister.sort_key
        )
        kern.prelude = prelude
        # per-tensor and global values read: from the buffers where an earlier kernel put them, or a state
        names = {self.names.get(r, r) for r in reads if r in self.per_tensor | self.global_names}
        own = set(kern.assigned)
        loads = []
        for n in sorted(names):
            if n in self.gslots or n in self.tslots:
                load = (
                    f"tl.load(gvals + {self.gslots[n]}).to(DT)"
                    if n in self.gslots
                    else f"tl.load(tvals + t_ * NT + {self.tslots[n]}).to(DT)"
                )
                when = self.skipped.get(n, "")
                if when and when not in kern.flags:
                    kern.flags = sorted(kern.flags + [when], key=self.hoister.sort_key)
                loads.append(f"{n} = {load} if {when} else 0.0" if when else f"{n} = {load}")
            elif n in self.tensor_states:
                loads += self.state_load(n, kern)
            elif n in own:
                continue
            else:
                raise BackendError(self.program.rule, "triton", f"{n} read before any kernel computes it")
        if kern.kind == "tensor":  # the per-tensor states it writes: their addresses
            for n in kern.assigned:
                if n in self.tensor_states and n not in names:
                    loads.append(self.state_load(n, kern)[0])
        kern.loads = loads
        if kern.kind in ("partial", "update"):
            kern.elements = [(n, self.optional_flag(n, kern)) for n in kern.arrays]
        if kern.kind == "update":
            kern.stores = [(n, self.optional_flag(n, kern)) for n in kern.written]
        if kern.kind in ("tensor", "global"):
            slots = self.gslots if kern.kind == "global" else self.tslots
            stores = []
            for n in kern.assigned:
                if n in self.tensor_states:
                    flag = self.optional_flag(n, kern)
                    line = f"tl.store({n}_, {n}.to(S_DT))"
                    stores.append(f"if {flag}:\n    {line}" if flag else line)
                slots.setdefault(n, len(slots))
                if kern.kind == "global":
                    stores.append(f"tl.store(gvals + {slots[n]}, {n}.to(tl.float64))")
                else:
                    stores.append(f"tl.store(tvals + t_ * NT + {slots[n]}, {n}.to(tl.float64))")
            kern.stores = stores

    def optional_flag(self, n: str, kern: Kernel) -> str:
        state = self.persisting.get(n)
        if state is None or state.allocated_when is sp.true:
            return ""
        flag = self.hoister.hoist(state.allocated_when, ())
        if flag not in kern.flags:
            kern.flags = sorted(kern.flags + [flag], key=self.hoister.sort_key)
        return flag

    def state_load(self, n: str, kern: Kernel) -> list[str]:
        flag = self.optional_flag(n, kern)
        ptr = f"{n}_ = tl.load(row + {self.columns[n]}).to(tl.pointer_type(S_DT))"
        load = f"tl.load({n}_).to(DT)"
        return [ptr, f"{n} = {load} if {flag} else 0.0" if flag else f"{n} = {load}"]


def step_code(h: Hoisted, p) -> str:
    """A once-per-step value as Python computes it (``dt``: the kernels' compute dtype), by the NumPy printer."""
    if h.boolean:
        return f"bool({p.doprint(h.expr)})"
    code = f"dt({p.doprint(h.expr)})"
    if h.guard is not sp.true:  # e.g. an option's value, only where the option is given
        code = f"{code} if {p.doprint(h.guard)} else dt(0)"
    return code
