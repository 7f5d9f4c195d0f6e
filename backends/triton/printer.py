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

from optforge.compiler import ops
from optforge.compiler.dsl import Over, Reduction
from optforge.compiler.errors import BackendError
from optforge.compiler.ir import Assign, Program, Role, Scope, SectionKind, base, version
from optforge.compiler.passes import conditions
from optforge.compiler.passes.evaluation import Types, kernel_tree
from optforge.compiler.passes.hoist import Hoisted, Invariants, hoist_tree
from optforge.compiler.passes.typing import boolean_names

from ..base import Backend, fused_name, section_scalars
from ..fused.printer import KernelCode, StepValue
from ..numpy.printer import NumPyBackend
from ..printer import ExprPrinter, OpPrinter


class TritonFunctions(ExprPrinter):
    """The functions a kernel calls, on blocks and on 0-d values alike: Triton's, and ``triton_support``'s
    where NumPy's semantics need them (IEEE square root in float32, NaN propagated by max and min)."""

    backend = "triton"
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

    def _print_Upcast(self, expr) -> str:  # the element, loaded in the kernel's dtype
        return self._print(expr.args[0])

    def call_text(self, fn: str, array: bool, args: list[str], arrays: tuple[bool, ...] = ()) -> str:
        if fn == "clip":  # np.clip(x, lo, hi) is minimum(maximum(x, lo), hi)
            x, lo, hi = args
            return f"fmin(fmax({x}, {lo}), {hi})"
        if fn == "float32":  # rounded, then in the kernel's dtype again
            return f"({args[0]}).to(tl.float32).to(DT)"
        return super().call_text(fn, True, args, arrays)


class TritonOps(OpPrinter):
    """A kernel tree in Triton: a select whose test is a constexpr flag stays Python's conditional (Triton
    folds it when it compiles the kernel), any other is ``tl.where``; ``and``, ``or`` and ``not`` on values
    (blocks, or 0-d values computed in the kernel) are ``&``, ``|`` and ``~``."""

    def __init__(self, p: ExprPrinter, flags: set[str], values: dict[str, str]) -> None:
        super().__init__(p, {}, {}, values=values)
        self.flags = flags  # the constexpr flags: once-per-step conditions

    def constexpr(self, e: ops.Expr) -> bool:
        while isinstance(e, (ops.Paren, ops.Guarded)):
            e = e.a
        if isinstance(e, ops.Name):
            return e.value.name in self.flags
        if isinstance(e, ops.BoolOp):
            return all(self.constexpr(v) for v in e.values)
        if isinstance(e, ops.Not):
            return self.constexpr(e.a)
        return False

    def _expr(self, e: ops.Expr) -> tuple[str, int]:
        P = ops.Prec
        if isinstance(e, ops.Paren) and isinstance(e.a, ops.IfExp) and not self.constexpr(e.a.test):
            return self._expr(e.a)  # a call, or parenthesised as its precedence needs
        if isinstance(e, ops.IfExp) and not self.constexpr(e.test):
            test = e.test
            while isinstance(test, (ops.Paren, ops.Guarded)):
                test = test.a
            static = ()
            if isinstance(test, ops.BoolOp) and test.op == "and":  # flags and values: the flags first
                static = tuple(v for v in test.values if self.constexpr(v))
                rest = tuple(v for v in test.values if not self.constexpr(v))
                test = rest[0] if len(rest) == 1 else ops.BoolOp("and", rest)
            orelse = self.expr(e.orelse)
            where = f"tl.where({self.expr(test)}, {self.expr(e.body)}, {orelse})"
            if not static:
                return where, P.ATOM
            flags = self.expr(ops.BoolOp("and", static) if len(static) > 1 else static[0], P.TEST + 1)
            return f"{where} if {flags} else {self.expr(e.orelse, P.TEST)}", P.TEST
        if isinstance(e, ops.BoolOp) and not self.constexpr(e):
            if any(self.constexpr(v) for v in e.values):
                raise BackendError(self.p.rule, self.p.backend, f"a condition mixing flags and values: {e!r}")
            prec = 11 if e.op == "and" else 9  # & and |, as Python binds them
            op = " & " if e.op == "and" else " | "
            return op.join(self.expr(v, prec + 1) for v in e.values), prec
        if isinstance(e, ops.Not) and not self.constexpr(e):
            return f"~{self.expr(e.a, P.FACTOR)}", P.FACTOR
        if isinstance(e, ops.Bin) and e.op == "**":  # Triton has no ** of blocks
            return f"fpow({self.expr(e.a)}, {self.expr(e.b)})", P.ATOM
        return super()._expr(e)


class KernelText(KernelCode):
    """Code inside a kernel: each expression as a kernel tree (``passes/evaluation.py``) whose invariants
    are named (``passes/hoist.py``), printed by :class:`TritonOps`. ``locals_``: the names held in the
    kernel (blocks per element; 0-d values per tensor in the per-tensor code)."""

    def __init__(self, rule: str, locals_: set[str], hoister: Invariants, names: dict[str, str]) -> None:
        super().__init__(rule, locals_, hoister, names)
        self.printer = TritonFunctions(rule, set(locals_), names)

    def doprint(self, expr: sp.Basic) -> str:
        printed = frozenset(self.names.get(n, n) for n in self.locals)
        types = Types(arrays=printed, elements=printed, names=self.names)
        try:
            tree = kernel_tree(expr, types)
        except NotImplementedError as exc:
            raise BackendError(self.rule, "triton", str(exc)) from None
        tree, used = hoist_tree(tree, self.hoister)
        self.used |= used
        flags = {h.name for h in self.hoister.step if h.boolean}
        return TritonOps(self.printer, flags, self.results).expr(tree)


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
    reads: set[sp.Symbol] = dataclasses.field(default_factory=set)  # versioned (``v``, ``v.1``)
    #: partial, update: the arrays read per element; update: those written
    arrays: list[str] = dataclasses.field(default_factory=list)
    written: list[str] = dataclasses.field(default_factory=list)
    #: tensor, global: the names it computes, in order (kept in tvals or gvals for the later kernels),
    #: and the version of each it computes last
    assigned: list[str] = dataclasses.field(default_factory=list)
    versions: dict[str, int] = dataclasses.field(default_factory=dict)
    defined: set[sp.Symbol] = dataclasses.field(default_factory=set)  # versions computed in the kernel

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
    kernels = True

    def __init__(self) -> None:
        super().__init__()
        self.numpy = NumPyBackend()

    def context(self, program: Program) -> dict:
        from optforge.compiler.passes.scope import scopes_of

        scopes = scopes_of(program)
        p = self.numpy.make_printer(program, scopes)
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


def _reduction(expr: sp.Basic, over: Over) -> Reduction | None:
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
            a.target
            for s in self.reduce_sections
            for a in s.body
            if _reduction(a.expr, Over.GLOBAL) is not None
        }
        self.hoister = Invariants(
            boolean_names(program), self.elements | self.per_tensor | self.global_names, p.names
        )
        self.kp = KernelText(program.rule, set(self.elements), self.hoister, self.names)
        self.sp = KernelText(
            program.rule, self.elements | self.per_tensor | self.global_names, self.hoister, self.names
        )
        self.persisting = {s.name: s for s in program.states if s.persists}
        # the states the update reads or writes, and those the reductions before it read (a state read only
        # by a reduction over all tensors, such as a snapshot of the initial parameters, is loaded there)
        used = set(backend.section_states(program, self.tensor_section))
        for section in self.reduce_sections:
            used |= set(backend.section_states(program, section))
        states = [s.name for s in program.states if s.name in used]
        self.element_states = [s for s in states if self.persisting[s].scope == Scope.ELEMENT]
        self.tensor_states = [s for s in states if self.persisting[s].scope == Scope.TENSOR]
        # the tensor table's columns: first chunk, number of chunks, then the addresses
        self.columns = {n: 2 + i for i, n in enumerate(["w", "g"] + states)}  # a work item's order
        self.tslots: dict[str, int] = {}  # per-tensor values kept in tvals, by printed name
        self.gslots: dict[str, int] = {}  # values over all tensors kept in gvals
        self.per_tensor_code: dict[str, tuple[str, set[str]]] = {}  # hoisted name -> (line, names it uses)
        self.skipped: dict[str, str] = {}  # a value whose kernel may be skipped -> the flag that runs it
        self.slot_versions: dict[str, int] = {}  # the version of each per-tensor value kept so far

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
        statements it may read), each per-tensor value computed once (a pass over all tensors replays those
        it reads: the first computes it, and writes the per-tensor state it is)."""
        out, seen = [], set()
        for section in self.reduce_sections:
            element = [a for a in section.body if a.scope == Scope.ELEMENT]
            for a in section.body:
                if a.scope == Scope.ELEMENT:
                    continue
                if _reduction(a.expr, Over.GLOBAL) is not None:
                    out.append(("global-reduce", a, element))
                elif _reduction(a.expr, Over.TENSOR) is not None:
                    if a.lhs not in seen:
                        out.append(("tensor-reduce", a, element))
                        seen.add(a.lhs)
                elif a.lhs not in seen:
                    out.append(("tensor-code", a, element))
                    seen.add(a.lhs)
        element = [a for a in self.tensor_section.body if a.scope == Scope.ELEMENT]
        for a in self.tensor_section.body:
            if a.scope == Scope.ELEMENT:
                continue
            if a.scope != Scope.TENSOR:
                raise BackendError(
                    self.program.rule, "triton", f"a {a.scope.word} statement in the tensor loop"
                )
            if a.lhs not in seen:
                kind = "tensor-reduce" if _reduction(a.expr, Over.TENSOR) is not None else "tensor-code"
                out.append((kind, a, element))
                seen.add(a.lhs)
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
            over = Over.GLOBAL if kind == "global-reduce" else Over.TENSOR
            red = _reduction(a.expr, over)
            partial = self.partial_kernel(f"_partial_{self.index}_{k}", a, red, element)
            finish = self.tensor_kernel(f"_{over}_{self.index}_{k}", over, a, red.accumulate)
            kernels += [partial, finish]
            self.add_tensor_code(finish, a, red)
            tensor_kernel = finish if over == Over.TENSOR else None
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
        """One program per chunk: the chunk's partial sum (or maximum) of the reduced value (``size``: of 1
        per element, in float64)."""
        arg = red.summand
        statements = self.closure(element, arg.free_symbols)
        body, used = [], set()
        for s in statements:
            line, u = self.element_line(s)
            body.append(line)
            used |= u
        self.kp.used = set()
        value = self.kp.doprint(arg)
        used |= self.kp.used
        # where the value is the reduction under a static condition, else 0 (clipnorm's norm): the
        # kernels are launched only where the condition holds; otherwise in every step
        when = ""
        e = a.expr
        if isinstance(e, sp.Piecewise) and len(e.args) == 2 and e.args[0][0] == red and e.args[1][0] == 0:
            static, dynamic = conditions.split(e.args[0][1], self.sp.locals)
            if dynamic is sp.true and static is not sp.true:
                when = self.hoister.hoist(static, ())
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
            self.sp.locals.add(marker.name)
            self.sp.results[marker.name] = "total_"
            line, used = self.scalar_line(a, a.expr.replace(lambda x: x == red, lambda x: marker))
        else:
            line, used = self.scalar_line(a)
        kern.body.append(line)
        kern.used |= used
        kern.reads |= {x for x in a.expr.free_symbols if x not in kern.defined}
        kern.defined.add(a.lhs)
        name = self.sp.name_of(a.lhs)
        if name not in kern.assigned:
            kern.assigned.append(name)
        kern.versions[name] = version(a.lhs)

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
        reads: set[sp.Symbol] = set(kern.reads)
        while pending:
            pending = sorted(set(pending) - done, key=self.hoister.sort_key)
            for n in pending:
                line, u = self.hoisted_line(items[n])
                used |= u
                done.add(n)
                h = items[n]
                reads |= {
                    x for x in h.expr.free_symbols | sp.sympify(h.guard).free_symbols if x not in kern.defined
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
        versions: dict[str, set[int]] = {}
        for r in reads:
            if base(r) in self.per_tensor | self.global_names:
                versions.setdefault(self.names.get(base(r), base(r)), set()).add(version(r))
        names = set(versions)
        loads = []
        for n in sorted(names):
            kept = self.slot_versions.get(
                n, 0
            )  # the version an earlier kernel left in the buffers (or memory)
            if versions[n] != {kept}:
                raise BackendError(
                    self.program.rule,
                    "triton",
                    f"{kern.name} reads version {sorted(versions[n])} of {n}, which an earlier kernel"
                    f" left at version {kept}",
                )
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
                self.slot_versions[n] = kern.versions[n]
                if kern.kind == "global":
                    stores.append(f"tl.store(gvals + {slots[n]}, {n}.to(tl.float64))")
                else:
                    stores.append(f"tl.store(tvals + t_ * NT + {slots[n]}, {n}.to(tl.float64))")
            kern.stores = stores

    def optional_flag(self, n: str, kern: Kernel) -> str:
        state = self.persisting.get(n)
        stored = sp.true if state is None else conditions.given(state.allocated_when, self.case.condition)
        if stored is sp.true:
            return ""
        if stored is sp.false:  # not stored in this case
            return "False"
        flag = self.hoister.hoist(stored, ())
        if flag not in kern.flags:
            kern.flags = sorted(kern.flags + [flag], key=self.hoister.sort_key)
        return flag

    def state_load(self, n: str, kern: Kernel) -> list[str]:
        flag = self.optional_flag(n, kern)
        ptr = f"{n}_ = tl.load(row_ + {self.columns[n]}).to(tl.pointer_type(S_DT))"
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
