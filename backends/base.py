"""What every backend shares: the view model handed to its template, and rendering.

A backend is a folder with three parts (see README.md): ``printer.py`` (a
printer subclass and a ``Backend`` subclass saying how a statement is
written), ``module.py.j2`` (layout only) and the package exports template.
The templates receive plain strings: all maths is printed here.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import subprocess
import sys
from typing import Any

import jinja2
import sympy as sp

from optforge.compiler.analysis import kernel_obstacle, param_condition, whole_tensor_reason
from optforge.compiler.errors import BackendError, RuleError
from optforge.compiler.ir import (
    Assign,
    Broadcast,
    Case,
    Form,
    Program,
    Role,
    Scope,
    Section,
    SectionKind,
    StateVar,
    Unused,
    base,
    ssa,
)
from optforge.compiler.passes import conditions, three_address
from optforge.compiler.passes.accumulators import accumulators
from optforge.compiler.passes.evaluation import Types, evaluation_tree
from optforge.compiler.passes.schedule import tensor_reduction_pass
from optforge.compiler.passes.shape import shapes_of, token
from optforge.compiler.passes.shape import suffix as shape_suffix
from optforge.compiler.passes.shape import words as shape_words
from optforge.compiler.passes.typing import array_names, element_names, number_names
from optforge.compiler.pipeline import compile_rule
from optforge.compiler.render import MathPrinter, docstring_equations, math_text

from .printer import ExprPrinter, OpPrinter, ShapeTestPrinter

HERE = pathlib.Path(__file__).parent


@dataclasses.dataclass
class Line:
    code: str
    comment: str = ""

    @property
    def pad(self) -> str:
        """The indentation of the code, for the comment above it."""
        return self.code[: len(self.code) - len(self.code.lstrip())]


class Backend:
    """How one framework's module is written. Subclasses fill in the tables."""

    name = ""
    #: what the module's step computes: the new parameter in place, or the change (``update``; JAX)
    form = Form.IN_PLACE
    #: the backend prints kernels (Numba's, Triton's): a rule whose constructs they do not take yet
    #: (``analysis.kernel_obstacle``) has no module here, and its plain modules say why
    kernels = False
    printer: type[ExprPrinter] = ExprPrinter
    #: rule name -> identifier in generated code (the learning rate is ``lr`` in step code everywhere)
    names = {"learning_rate": "lr"}
    #: scopes whose values are arrays (not Python scalars) in this backend's step code
    array_scopes = frozenset({Scope.TENSOR, Scope.ELEMENT})
    #: the hyperparameters are Python numbers in the step code (JAX's may be traced arrays: jit,
    #: optax.inject_hyperparams), so a per-tensor value computed from them and the tensor's size is one
    hyperparameters_are_numbers = True
    #: names that are arrays whatever their scope (JAX: the traced step and learning rate)
    array_names: frozenset[str] = frozenset()
    #: whether a reduction over all tensors is an array (a 0-d tensor) rather than a Python number
    global_reductions_are_arrays = False
    #: a reduction over one tensor may communicate (torch: a DTensor's sum adds its shards'): where the loop
    #: that updates the tensors has such reductions, they are also printed as a pass over all tensors before
    #: it, which the runtime takes where they communicate (one collective instead of one per tensor)
    tensor_reductions_communicate = False
    #: how an accumulator over all tensors starts
    reduce_init = {"sum": "0.0", "max": "-math.inf"}
    #: the table of element-wise operations with ``out=`` (compiler/passes/three_address.py): operation ->
    #: call format; statements on per-element arrays then write into scratch buffers instead of
    #: allocating. Empty: statements as printed
    ops: dict[str, str] = {}
    #: a statement on a per-tensor buffer, updated in place: "add" (x += d), "sub", "set" (x[...] = v) and,
    #: where the backend has it, "fill" (a value that is a Python number)
    forms: dict[str, str] = {}
    support = ""  # the runtime module with scratch()
    #: the runtime module of Keras's options' stages, which also checks their values ('' where the
    #: generated module checks them itself)
    stages = ""
    #: the table's arithmetic rows take a mask (``{where}``: NumPy's ``where=``), so that each branch of a
    #: select is computed only where it is taken
    masked = False

    def __init__(self) -> None:
        self.env = jinja2.Environment(
            # the backend's templates, then the partials every backend shares (``backends/*.j2``)
            loader=jinja2.ChoiceLoader(
                [jinja2.FileSystemLoader(str(HERE / self.name)), jinja2.FileSystemLoader(str(HERE))]
            ),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    # -- statements ---------------------------------------------------------------------

    def always_arrays(self, program: Program) -> frozenset[str]:
        """The names that hold arrays in this backend whatever they are computed from (``array_names``)."""
        return self.array_names

    def make_printer(self, program: Program, scopes: dict[str, Scope]) -> ExprPrinter:
        """A printer that knows which names hold arrays: by scope, by backend, and any value computed from one."""
        arrays = array_names(
            program,
            scopes,
            array_scopes=self.array_scopes,
            always=self.always_arrays(program),
            reductions=self.global_reductions_are_arrays,
            hypers_are_numbers=self.hyperparameters_are_numbers,
        )
        printer = self.printer(program.rule, set(arrays), self.names)
        # per-element arrays, as printed
        printer.elements = set(element_names(scopes, printer.names))
        printer.shapes = shapes_of(program)
        printer.numbers = number_names(program)
        # the states stored in a dtype of their own (``mu_dtype``): narrower than the arithmetic, maybe
        printer.narrow = {printer.names.get(s.name, s.name) for s in program.states if s.dtype}
        if printer.tests_per_tensor_values:
            printer.selects = {"w", "g"} | {n for n, s in scopes.items() if s == Scope.ELEMENT}
        return printer

    def statement(self, a: Assign, p: ExprPrinter) -> list[str]:
        """The lines of one assignment; ``x <- where(c, e, x)`` becomes ``if c:`` around ``x <- e`` where
        ``c`` (or its static part) is a Python value; a reduction that the pass before the loop computed
        (``tensor_prepass``) is read from it where it ran."""
        if a.role == Role.REDUCE and a.target in p.prepassed:
            computed = self.plain_statement(a, p)
            taken = f"{p.name_of(a.lhs)} = _reduced[w][{p.prepassed[a.target]}]"
            return ["if _reduced is None:", *("    " + c for c in computed), "else:", "    " + taken]
        guarded = self.guard(a, p)
        if guarded is not None:
            cond, inner = guarded
            lines = self.statement(inner, p)  # none: the value stays as it is (Python has no empty block)
            return [f"if {cond}:"] + ["    " + line for line in lines] if lines else []
        return self.plain_statement(a, p)

    def guard(self, a: Assign, p: ExprPrinter) -> tuple[str, Assign] | None:
        """The static part of ``x <- where(c, e, x)``, printed, and what runs under it (passes/conditions.py)."""
        guarded = conditions.guard(a, p.selects)
        return None if guarded is None else (p.doprint(guarded[0]), guarded[1])

    def plain_statement(self, a: Assign, p: ExprPrinter) -> list[str]:
        """One statement without a static guard: buffers updated in place (``forms``), other names bound;
        a value with an axis reduced (a row) into registers of its own shape."""
        name = p.name_of(a.lhs)
        lower = self.lowers(a, p)
        shape = (p.shapes.get(a.target) or frozenset()) if a.scope == Scope.ELEMENT else frozenset()
        registers = p.registers.file(shape) if lower else None
        if registers is not None:  # under a test of the shape (passes/shape_guards.py), or always
            unused = isinstance(a.expr, sp.Piecewise) and isinstance(a.expr.args[-1][0], Unused)
            registers.conditions.append(a.expr.args[0][1] if unused else sp.true)
        if a.role in (Role.STATE, Role.PARAM) and a.scope >= Scope.TENSOR:
            kind, value = three_address.in_place_form(a, p.arrays, fill="fill" in self.forms)
            form = self.forms[kind]
            if kind == "fill" or not lower:
                return [form.format(name=name, value=p.doprint(value))]
            printed = f"{name} {_OPERATOR[kind]} {p.doprint(value)}"  # the maths, whatever the backend's form
            tree = evaluation_tree(self.lifted(value, p), self.types(p, shape))
            if kind == "set":
                lowered = three_address.overwrite(name, tree, self.target(p), registers)
            else:
                lowered = three_address.update(kind, name, tree, self.target(p), registers)
            return self.explained(lowered, p, printed, registers)
        code = p.doprint(a.expr)
        if not lower:
            return [f"{name} = {code}"]
        value = self.lifted(_broadcast_names(a.expr, shape, p.shapes), p)
        lowered = three_address.bind(
            name, evaluation_tree(value, self.types(p, shape)), self.target(p), registers
        )
        return self.explained(lowered, p, f"{name} = {code}", registers)

    def lifted(self, value: sp.Basic, p: ExprPrinter) -> sp.Basic:
        """A value with its Python-tested choices between arrays lifted to the top (``conditions.lift``):
        an ``if`` block per branch, each written into the buffers."""
        elements = {n for n, shape in p.shapes.items() if shape is not None} | {"w", "g"}
        return conditions.lift(value, p.selects, elements)

    def lowers(self, a: Assign | None, p: ExprPrinter) -> bool:
        """Whether the statement is written as operations into scratch buffers: a per-element statement, a
        reduction, or (``a`` None) an accumulation over all tensors, in a pass over the tensors, where the
        backend has a table of operations."""
        if not self.ops or p.registers is None:
            return False
        if a is not None and a.role == Role.REDUCE and a.target in p.numbers:
            return False  # the rank, the dtype's epsilon: Python numbers
        return a is None or a.scope == Scope.ELEMENT or a.role == Role.REDUCE

    def target(self, p: ExprPrinter) -> three_address.Target:
        """What the table can write: the functions it has a row for, and whether it has compound calls;
        which arrays may be narrower than the arithmetic (``p.narrow``)."""
        return three_address.Target(
            calls=frozenset(k.partition("/")[0] for k in self.ops),
            compound="inplace_addcdiv_scaled" in self.ops,
            masked=self.masked,
            narrow=frozenset(p.narrow),
        )

    def types(self, p: ExprPrinter, shape: frozenset[int] = frozenset()) -> Types:
        """What the typing says, as the printer names things (for the evaluation trees); ``shape``: the axes
        reduced in the registers the statement is written into."""
        return Types(
            arrays=frozenset(p.arrays),
            elements=frozenset(p.elements),
            selects=frozenset(p.selects),
            names=dict(p.names),
            copies=bool(p.functions.get("Copy", ("", ""))[0]),
            shapes=p.shapes,
            file=shape,
        )

    def explained(
        self, lowered: three_address.Lowered, p: ExprPrinter, printed: str, registers: Any = None
    ) -> list[str]:
        """The operations printed with the table, under the statement they compute, as a comment: several
        calls read as one line of maths (a statement split by a Python condition into ``if`` blocks is left
        as it is)."""
        three_address.verify(lowered, registers or p.registers)
        lines = OpPrinter(p, self.ops, self.forms).statements(lowered.body)
        if len(lines) < 2 or lowered.branched:
            return lines
        return [f"# {printed}"] + lines

    def scratch_lines(self, section: Section, program: Program, registers: Any, p: ExprPrinter) -> list[Line]:
        """The line that binds the ``registers`` a pass over the tensors used (none if it used none)."""
        if registers is None:
            return []
        out = []
        for file in (registers, *registers.files.values()):
            scope = shape_suffix(file.shape)
            shaped = (
                "shaped like w"
                if not scope
                else f"shaped like w with axis {scope[1:]} of length 1"
                if isinstance(file.shape, frozenset)
                else f"of w viewed as m x n, shaped {shape_words(file.shape)}"
            )
            keyword = f', scope="element{scope}"' if scope else ""
            # where every statement that takes them runs under a test of the shape: only then
            # (a pass that recorded none, the accumulations over all tensors': always)
            conds = file.conditions
            condition = sp.true if not conds or sp.true in conds else sp.Or(*conds)
            only = (
                ""
                if condition is sp.true
                else f" if {self.static_test(condition, section, p)} else (None,) * {{}}"
            )
            names = file.names()
            if names:
                arrays = ", ".join(["w", "g"] + self.element_states(program, section))
                out.append(
                    Line(
                        f"{_unpacked(names)} = {self.support}.scratch(self._scratch, {len(names)}, {arrays}{keyword})"
                        + only.format(len(names)),
                        f"scratch buffers for the element-wise temporaries (reused, {shaped})",
                    )
                )
            masks = file.mask_names()
            if masks:
                out.append(
                    Line(
                        f"{_unpacked(masks)} = {self.support}.masks(self._scratch, {len(masks)}, w{keyword})"
                        + only.format(len(masks)),
                        f"boolean buffers for the selects' conditions (reused, {shaped})",
                    )
                )
        return out

    def static_test(self, condition: sp.Basic, section: Section, p: ExprPrinter) -> str:
        """A test of the tensor's shape, printed from the shape itself (``_defined``): Python's logic on
        Python numbers, whatever reads ``w``."""
        selects, p.selects = p.selects, set()
        try:
            return p.doprint(_defined(condition, section))
        finally:
            p.selects = selects

    def element_states(self, program: Program, section: Section) -> list[str]:
        element = {s.name for s in program.states if s.scope == Scope.ELEMENT}
        return [n for n in self.section_states(program, section) if n in element]

    def expr(self, expr: sp.Basic, p: ExprPrinter, equation: int | None, program: Program) -> str:
        try:
            return p.doprint(expr)
        except BackendError as exc:
            if equation is None or exc.equation is not None:
                raise
            raise BackendError(
                program.rule, self.name, exc.node, equation=program.written(equation)["equation"]
            ) from None

    def reduce_guard(self, section: Section, p: ExprPrinter) -> str:
        """The static condition under which a pass over all tensors is needed at all ('' if always)."""
        cond = conditions.pass_condition(section, p.arrays)
        return "" if cond is sp.true else p.doprint(cond)

    def finalize_lines(self, program: Program, p: ExprPrinter) -> list[Line]:
        """Keras's finalize_variable_values: the rule's ``finalize`` equations, for one tensor."""
        out = []
        if finalize_reads_step(program):  # the template binds n, the last step's (steps taken - 1)
            step = program.equations[0].expr if program.equations[0].target == "t" else sp.Symbol("n") + 1
            out.append(Line(f"t = {p.doprint(step)}", "the last step's t"))
        for i, (expr, label) in enumerate(program.finalize):
            a = Assign("w", i + 1, expr, Role.PARAM, Scope.ELEMENT, label)
            for j, code in enumerate(self.statement(a, p)):
                out.append(Line(code, label if j == 0 else ""))
        return out

    def reduce_lines(
        self, program: Program, section: Section, p: ExprPrinter
    ) -> tuple[list[Line], list[Line]]:
        """A pass over all tensors: (lines before the loop, lines inside it), one accumulator per reduction."""
        init, inside = [], []
        replays = [a for a in section.body if a.role == Role.REPLAY]
        if replays:  # the values the reductions read, recomputed locally
            inside += self.section_lines(program, Section(SectionKind.REPLAY, tuple(replays)), p)
        for acc in accumulators(section, p.arrays):
            name = p.name_of(sp.Symbol(acc.name))
            init.append(Line(f"{name} = {self.reduce_init[acc.kind]}", f"over all tensors: {acc.name}"))
            lines = [f"{name} = {p.doprint(acc.step)}"]
            if self.lowers(None, p):  # the reduced values into scratch buffers
                tree = evaluation_tree(acc.step, self.types(p))
                lowered = three_address.bind(name, tree, self.target(p), p.registers)
                three_address.verify(lowered, p.registers)
                lines = OpPrinter(p, self.ops, self.forms).statements(lowered.body)
            if acc.static is not sp.true:
                lines = [f"if {p.doprint(acc.static)}:"] + ["    " + c for c in lines]
            inside += [Line(c) for c in lines]
        return init, inside

    def section_lines(self, program: Program, section: Section, p: ExprPrinter) -> list[Line]:
        """The statements of a section; consecutive ones under the same condition share one ``if``."""
        out: list[Line] = []
        last_label = None
        open_guard = None
        for a in section.body:
            comment = ""
            if a.equation is not None and a.label != last_label:
                comment = a.label
                last_label = a.label
            try:
                guarded = self.guard(a, p)
                cond, inner = guarded if guarded is not None else (None, a)
                code = self.statement(inner, p)
            except BackendError as exc:
                if a.equation is None or exc.equation is not None:
                    raise
                raise BackendError(
                    program.rule, self.name, exc.node, equation=program.written(a.equation)["equation"]
                ) from None
            if not code:  # the statement leaves the value as it is
                continue
            if cond is None:
                open_guard = None
                out += [Line(c, comment if i == 0 else "") for i, c in enumerate(code)]
                continue
            if cond != open_guard:
                out.append(Line(f"if {cond}:", comment))
                open_guard = cond
                comment = ""
            out += [Line("    " + c, comment if i == 0 else "") for i, c in enumerate(code)]
        return out

    # -- the view model -------------------------------------------------------------------

    def print_cases(self, program: Program, scopes: dict[str, Scope], p: ExprPrinter) -> list[dict[str, Any]]:
        """Each case of ``program``: its condition and its sections, printed."""
        cases = []
        for i, case in enumerate(program.cases):
            sections = self.case_sections(program, case)
            # the shapes of this case's values (a name may be a row in one case only), its states' as stored
            p.shapes = shapes_of(program, case)
            printed = []
            for s in sections:
                prepass = self.tensor_prepass(program, s, p)
                # a pass over the tensors writes its element-wise temporaries into registers of its own
                p.registers = registers = three_address.Registers() if s.kind != SectionKind.STEP else None
                init, lines = (
                    self.reduce_lines(program, s, p)
                    if s.kind == SectionKind.REDUCE
                    else ([], self.section_lines(program, s, p))
                )
                lines = self.scratch_lines(s, program, registers, p) + lines
                p.registers, p.prepassed = None, {}
                guard = self.reduce_guard(s, p) if s.kind == SectionKind.REDUCE else ""
                printed.append(
                    {
                        "kind": s.kind,
                        "prepass": prepass,
                        "init": init,
                        "guard": guard,
                        "lines": lines,
                        "states": [n for n in self.section_states(program, s)],
                        # the states with a value per element: what the fused kernels read by address
                        "element_states": [
                            n
                            for n in self.section_states(program, s)
                            if next(v for v in program.states if v.name == n).scope == Scope.ELEMENT
                        ],
                        "reads_param": any(sp.Symbol("w") in a.expr.free_symbols for a in s.body),
                        # a pass's reductions over all tensors, (printed name, "sum" | "max"): torch adds
                        # (or takes the largest of) every parameter group's (``RuleOptimizer.step``)
                        "totals": [
                            (p.name_of(sp.Symbol(acc.name)), str(acc.kind))
                            for acc in accumulators(s, p.arrays)
                        ]
                        if s.kind == SectionKind.REDUCE
                        else [],
                        # the fused path (generated/fused): the case that updates the tensors, and what it reads
                        "fused": fused_name(i) if s.kind == SectionKind.TENSOR else "",
                        "scalars": section_scalars(program, scopes, s, self.names)
                        if s.kind == SectionKind.TENSOR
                        else [],
                    }
                )
            cond = case.test
            keyword = "if" if i == 0 else ("else" if i == len(program.cases) - 1 else "elif")
            cases.append(
                {
                    "keyword": keyword if len(program.cases) > 1 else "",
                    "condition": "" if cond is sp.true or keyword == "else" else p.doprint(cond),
                    "sections": printed,
                    "states": [
                        s.name for s in program.states if s.name in case.states and s.scope >= Scope.TENSOR
                    ],
                }
            )
        return cases

    def tensor_prepass(self, program: Program, section: Section, p: ExprPrinter) -> dict[str, Any] | None:
        """Where the backend's reductions over one tensor communicate, the loop ``section``'s reductions as a
        pass over all tensors (``schedule.tensor_reduction_pass``), printed: its lines, the states it reads
        and the names it computes (in the order the loop reads them back); the loop's printer then knows
        them (``p.prepassed``). None where there is no such pass."""
        if not self.tensor_reductions_communicate or whole_tensor_reason(program):
            return None  # a rule that gathers its tensors whole reduces them where they are
        prepass = tensor_reduction_pass(section)
        if prepass is None:
            return None
        p.registers = registers = three_address.Registers()
        lines = self.section_lines(program, prepass, p)
        lines = self.scratch_lines(prepass, program, registers, p) + lines
        p.registers = None
        reduced = [a for a in prepass.body if a.role == Role.REDUCE]
        p.prepassed = {a.target: i for i, a in enumerate(reduced)}
        return {
            "lines": lines,
            "states": self.section_states(program, prepass),
            "names": [p.name_of(a.lhs) for a in reduced],
        }

    def stages_context(self, program: Program, cases: list[dict[str, Any]]) -> dict[str, Any]:
        """The plain backends' view of a rule that Keras's options wrap (``program.inner``): the rule's own
        program, printed alone (the options run as stages from ``runtime/``), and what the fused kernels,
        compiled from the whole program, take per case."""
        from optforge.compiler.passes.scope import scopes_of
        from optforge.runtime.options import STAGE_VALUES

        inner = program.inner or program
        scopes = scopes_of(inner)
        ip = self.make_printer(inner, scopes)
        rule_cases = self.print_cases(inner, scopes, ip) if program.inner is not None else cases
        if [c.condition for c in inner.cases] != [c.condition for c in program.cases]:
            raise RuleError(
                program.rule,
                f"the rule has the cases {[str(c.condition) for c in inner.cases]}, with Keras's options"
                f" {[str(c.condition) for c in program.cases]}: the {self.name} backend runs the options as"
                " stages around each case of the rule",
                hint="a transform adds no case: write its conditions with only_if=, not when=",
            )
        own = {h.name for h in inner.hypers}
        options = [h.name for h in program.hypers if h.name not in own]
        known = set(scopes) | own | {self.names.get(n, n) for n in scopes}
        fused_cases = []
        # a rule that defines its step itself (define_step) gives the kernels its own t, not the stages'
        own_step = any(eq.target == "t" for eq in inner.core or inner.equations)
        stage_values = set(STAGE_VALUES) - ({"t"} if own_step else set())
        if "global_clipnorm" not in options:  # no stage sums the gradient: a global_sumsq_g is the rule's own
            stage_values.discard("global_sumsq_g")
        for i, case in enumerate(cases):
            (s,) = [s for s in case["sections"] if s["kind"] == SectionKind.TENSOR]
            given = set(options) | stage_values | {"lr"}
            renamed = _reductions_renamed(program.rule, program.cases[i], inner.cases[i], set(options))
            rule_scalars = [n for n in s["scalars"] if n not in given]
            missing = [n for n in rule_scalars if renamed.get(n, n) not in known]
            if missing:
                raise RuleError(
                    program.rule,
                    f"the fused kernel of case {i} takes {missing}, which neither the rule nor the"
                    " options' stages (runtime/options.py) compute",
                    hint="give the value a name in the rule, or add it to runtime/options.py's STAGE_VALUES",
                )
            fused_cases.append(
                {
                    "kernel": s["fused"].upper(),
                    # the kernel's name of each of the rule's values, and the rule's own
                    "rule_scalars": [{"key": n, "value": renamed.get(n, n)} for n in rule_scalars],
                }
            )
        rule_states = {st.name for st in inner.states if st.persists}
        return {
            "rule_cases": rule_cases,
            # a pass of the rule over all tensors yields its parts of the reductions (torch: every group's
            # are combined, ``RuleOptimizer.step``)
            "over_groups": any(s["totals"] for c in rule_cases for s in c["sections"]),
            # the rule's own hyperparameters (the options' are read by the stages)
            "rule_others": [h for h in self._hypers(inner) if h["name"] != "learning_rate"],
            "rule_optional_states": [
                st.name for st in inner.states if st.persists and st.allocated_when is not sp.true
            ],
            "rule_global_states": [
                st for st in self._states(inner, ip) if st["scope"] == "global" and st["name"] in rule_states
            ],
            # Keras's options this module takes (a rule's own weight_decay is not the option)
            "options": options,
            # the states the options' stages keep (the accumulator, the EMA), not the rule
            "option_states": [st.name for st in program.states if st.persists and st.name not in rule_states],
            "fused_cases": fused_cases,
            "rule_modules": sorted(ip.modules),
        }

    def context(self, program: Program) -> dict[str, Any]:
        from optforge.compiler.passes.scope import scopes_of

        scopes = scopes_of(program)
        p = self.make_printer(program, scopes)
        param_when = param_condition(program) if program.form == Form.INCREMENT else sp.false
        cases = self.print_cases(program, scopes, p)
        states = self._states(program, p)
        hypers = self._hypers(program)
        return {
            "program": program,
            "rule": program.rule,
            "module": program.module,
            "source": program.file,
            "title": program.title,
            "summary": program.summary,
            # why the kernel backends print no kernels for this rule ("" where they do)
            "kernels_refused": kernel_obstacle(program) if program.kernel_class is None else "",
            # the tensors the kernels take where not every tensor's step is element-wise ("" every tensor)
            "kernel_tensors": ""
            if program.kernel_class is None
            else repr(math_text(program.kernel_class[0])),
            # why a sharded parameter (torch's DTensor) is gathered whole for the rule ("" where it is not)
            "whole_tensors": whole_tensor_reason(program),
            "equations": docstring_equations(program),
            "hypers": hypers,
            "per_param": [s for s in states if s["scope"] != "global"],
            "global_states": [s for s in states if s["scope"] == "global"],
            "others": [h for h in hypers if h["name"] != "learning_rate"],
            "lr": next(h for h in hypers if h["name"] == "learning_rate"),
            "states": states,
            # hyperparameters that decide whether a state exists, or its initial value
            "state_conditions": sorted(
                {
                    str(x).rstrip("?")  # Given(x) reads the option x
                    for s in program.states
                    for x in sp.sympify(s.allocated_when).free_symbols | s.init.free_symbols
                }
                | {h for s in program.states for h in _kept_hypers(s)}
            ),
            "cases": cases,
            "reads_param": program.form == Form.INCREMENT and program.reads_param,
            # the step reads the objective's value (``loss``): each backend's step takes it
            "reads_loss": program.reads_loss,
            # when the increment form reads w: "" never, "True" always, else a Python condition
            "param_condition": "" if param_when is sp.false else p.doprint(param_when),
            "param_condition_text": ""
            if param_when in (sp.true, sp.false)
            else MathPrinter().doprint(param_when),
            "exclusives": [list(e) for e in program.exclusives],
            "finalize": self.finalize_lines(program, p),
            "finalize_reads_step": finalize_reads_step(program),
            "finalize_states": sorted(
                {b for e, _ in program.finalize for b in map(base, sp.sympify(e).free_symbols)}
                & {s.name for s in program.states if s.scope != Scope.GLOBAL}
            ),
            # the hyperparameters a finaliser reads (its conditions too)
            "finalize_hypers": [
                h
                for h in hypers
                if h["name"]
                in {
                    getattr(x, "option", None) or x.name
                    for e, _ in program.finalize
                    for x in sp.sympify(e).free_symbols
                }
            ],
            # the states kept once per optimizer that a finaliser reads
            "finalize_globals": [
                s
                for s in states
                if s["scope"] == "global"
                and any(sp.Symbol(s["name"]) in sp.sympify(e).free_symbols for e, _ in program.finalize)
            ],
            "optional_states": [
                s.name for s in program.states if s.persists and s.allocated_when is not sp.true
            ],
            # the constructor keywords that choose a state's dtype (optax's mu_dtype), each with its states
            "dtype_keywords": [
                {"name": k, "states": [s.name for s in program.states if s.persists and s.dtype == k]}
                for k in dict.fromkeys(s.dtype for s in program.states if s.persists and s.dtype)
            ],
            "modules": sorted(p.modules),
            **self.stages_context(program, cases),
        }

    def _states(self, program: Program, p: ExprPrinter) -> list[dict[str, Any]]:
        return [
            {
                "name": s.name,
                "meaning": s.meaning,
                "scope": _scope(s),
                # the constructor keyword that chooses its dtype ("": the optimizer's state dtype)
                "dtype": s.dtype,
                # axes reduced to length 1 (common.state_shape): a row or a column of a matrix
                "reduced": bool(s.reduced),
                "reduced_text": (
                    f"axis {', '.join(map(token, s.reduced))} of the parameter's shape reduced to length 1"
                    if s.reduced
                    else ""
                ),
                # kept for some tensors only (a test of the shape, as Python over ``shape``): the module's
                # constant ``scope_code`` (a ``common.PerTensor`` scope) says which
                "kept": "" if s.kept is sp.true else ShapeTestPrinter().doprint(s.kept),
                "kept_text": "" if s.kept is sp.true else math_text(s.kept),
                # the hyperparameters the test reads: the scope is bound to their values where it is used
                "kept_hypers": _kept_hypers(s),
                "scope_name": f"{s.name.upper()}_SCOPE",
                "scope_code": repr(_scope(s))
                if s.kept is sp.true
                else f"{s.name.upper()}_SCOPE"
                + (f".bind({', '.join(f'{h}={h}' for h in _kept_hypers(s))})" if _kept_hypers(s) else ""),
                "init": p.doprint(s.init),
                "zero": s.init == 0,
                # an initial value that reads w: computed from each parameter (in the state's dtype)
                "from_w": sp.Symbol("w") in s.init.free_symbols,
                "when": "" if s.allocated_when is sp.true else p.doprint(s.allocated_when),
                # the same, as maths (for a comment)
                "when_text": "" if s.allocated_when is sp.true else MathPrinter().doprint(s.allocated_when),
                # a global state computed from arrays (a reduction over all tensors): an array itself
                "array": s.scope == Scope.GLOBAL and s.name in p.arrays,
            }
            for s in program.states
            if s.persists
        ]

    def _hypers(self, program: Program) -> list[dict[str, Any]]:
        own = {h.name for h in (program.inner or program).hypers}
        return [
            {
                "name": h.name,
                "default": repr(h.default),
                "required": h.default is None and h.kind == "learning_rate",
                "option": h.optional,
                "zero_is_off": h.zero_is_off,
                # Keras's options are checked by the runtime's table (runtime/options.py), the rule's here
                "check": _check_call(h, stages=None if h.name in own else self.stages),
                # as the signature annotates it
                "kind": ("str | None" if None in h.choices else "str") if h.kind == "choice" else h.kind,
                "meaning": h.meaning,
                "low": _num(h.interval.low) if h.interval else "",
                "high": _num(h.interval.high) if h.interval else "",
                "low_closed": h.interval.low_closed if h.interval else False,
                "high_closed": h.interval.high_closed if h.interval else False,
                "interval": str(h.interval) if h.interval else "",
            }
            for h in program.hypers
        ]

    def case_sections(self, program: Program, case) -> tuple[Section, ...]:
        """The sections of ``case`` as this backend prints them."""
        return case.sections

    def section_states(self, program: Program, section: Section) -> list[str]:
        """Per-parameter states a loop over the tensors reads or writes."""
        names = {s.name for s in program.states if s.persists and s.scope >= Scope.TENSOR}
        used = set()
        for a in section.body:
            used |= {base(s) for s in a.expr.free_symbols} | {a.target}
        return [s.name for s in program.states if s.name in used and s.name in names]

    def compile(self, rule) -> Program:
        """``rule`` compiled in this backend's form."""
        return compile_rule(rule, form=self.form)

    def render(self, program: Program) -> str:
        if program.form != self.form:
            raise ValueError(
                f"the {self.name} backend prints a program in the {self.form} form; '{program.rule}' is in "
                f"the {program.form} form: compile it with compile_rule(rule, form=Form.{self.form.name}) "
                f"or backend.compile(rule)"
            )
        test = None
        if self.kernels and kernel_obstacle(program) and program.kernel_class is not None:
            test, program = program.kernel_class  # the tensors whose step is element-wise
        context = self.context(program)
        context["tensor_test"] = None if test is None else tensor_test(test)
        text = self.env.get_template("module.py.j2").render(**context)
        return format_source(text, f"generated/{self.name}/{program.module}.py")

    def takes(self, program: Program) -> bool:
        """Whether this backend prints a module for the program (a kernel backend: where its constructs
        are lowered into kernels, for every tensor or for those whose step is element-wise)."""
        return not (self.kernels and kernel_obstacle(program) and program.kernel_class is None)

    def render_exports(self, programs: list[Program]) -> str:
        programs = [p for p in programs if self.takes(p)]
        text = self.env.get_template("__init__.py.j2").render(programs=programs)
        return format_source(text, f"generated/{self.name}/__init__.py")


_OPERATOR = {"add": "+=", "sub": "-=", "set": "="}


def _broadcast_names(expr: sp.Basic, shape: frozenset[int], shapes: dict) -> sp.Basic:
    """A value bound to a name of ``shape``, where it is (in a branch) just another name of another shape (a
    row, where the name holds the tensor's shape in another branch): copied, broadcast, into the name's
    register, so that what reads the name reads the name's shape in either branch."""
    if isinstance(expr, sp.Symbol):
        other = shapes.get(base(expr))
        return Broadcast(expr) if other is not None and other != shape else expr
    if isinstance(expr, sp.Piecewise):
        return sp.Piecewise(*[(_broadcast_names(v, shape, shapes), c) for v, c in expr.args])
    return expr


def _reductions_renamed(rule: str, full: Case, inner: Case, options: set[str]) -> dict[str, str]:
    """The rule's own reductions over all tensors, named in the program with the options (where the
    options' come first: ``global_sumsq_g_1``) -> their names in the rule's own program (``global_sumsq_g``),
    matched in order; those of the options (read under a test of an option) are the stages'."""

    def reductions(case: Case, skip: set[str]) -> list[str]:
        return [
            a.target
            for a in case.body
            if a.role == Role.REDUCE
            and a.scope == Scope.GLOBAL
            and not any(getattr(x, "option", None) in skip for x in a.expr.free_symbols)
        ]

    ours, theirs = reductions(full, options), reductions(inner, set())
    if len(ours) != len(theirs):
        raise RuleError(
            rule,
            f"the rule has the reductions over all tensors {theirs}; with Keras's options, {ours} besides"
            " the options' own",
            hint="a transform adds reductions only under a test of one of its options",
        )
    return {a: b for a, b in zip(ours, theirs) if a != b}


def finalize_reads_step(program: Program) -> bool:
    """Whether a finaliser reads the step (``t`` or ``n``): it sees the last step's values."""
    step = {sp.Symbol("t"), sp.Symbol("n")}
    return any(step & sp.sympify(e).free_symbols for e, _ in program.finalize)


def fused_name(case: int) -> str:
    """The name of case ``case`` in ``generated/fused/<module>.py`` (its ``UPDATE_CASE_<i>`` and functions)."""
    return f"update_case_{case}"


def section_scalars(
    program: Program, scopes: dict[str, Scope], section: Section, names: dict[str, str]
) -> list[str]:
    """The once-per-step values (hyperparameters, step values) a loop over the tensors reads, in a stable order."""
    found = set()
    for a in section.body:
        for s in a.expr.free_symbols:
            name = getattr(s, "option", None) or base(s)
            if scopes.get(name, Scope.CONST) <= Scope.GLOBAL:
                found.add(name)
    order = [h.name for h in program.hypers]
    ordered = sorted(found, key=lambda n: (order.index(n) if n in order else len(order), n))
    return [names.get(n, n) for n in ordered]


def native_names(
    names: list[str], pairs: dict[tuple[str, str], str], singles: dict[str, str]
) -> dict[str, tuple[str, int | None]]:
    """``{rule's name: (the framework's name, index in its tuple or None)}`` for a rule's hyperparameters
    ``names``: a pair of the rule's that the framework passes as one tuple (``pairs``: torch's ``betas``),
    a single one it names otherwise (``singles``: ``eps``); only where the framework's name is not one of
    the rule's own."""
    out: dict[str, tuple[str, int | None]] = {}
    for pair, key in pairs.items():
        if all(n in names for n in pair) and key not in names:
            out.update({n: (key, i) for i, n in enumerate(pair)})
    for name, key in singles.items():
        if name in names and key not in names and name not in out:
            out[name] = (key, None)
    return out


def renamed_doc(renamed: list[dict[str, Any]]) -> str:
    """The docstring's line on the rule's own names, accepted beside the framework's."""
    keys = [h["key"] + ("" if h["index"] is None else f"[{h['index']}]") for h in renamed]
    return (
        f"{', '.join(h['name'] for h in renamed)}: the rule's names for {', '.join(keys)} (keywords;"
        " where given, they win)."
    )


def _check_call(
    h, label: str | None = None, arrays: bool | None = None, alias: bool = False, stages: str | None = None
) -> str:
    """The run-time check of a constructor argument, by kind; ``label``: its name in messages (the
    argument's own name by default); ``arrays``: a real one may be a 0-d array (JAX; False: it decides
    which computation runs, and must not be one); ``alias``: the argument is ``label``, or the rule's name
    where that one is given (the message names the one given); ``stages``: the runtime module of Keras's
    options (``options_numpy``), for an option, which it checks (``options.CHECKS``)."""
    label = label or h.name
    given = f'*common.named("{label}", {label}, "{h.name}", {h.name})' if alias else f'"{label}", {h.name}'
    more = {None: "", True: ", arrays=True", False: ", static=True"}[arrays] if h.kind == "float" else ""
    if stages and not alias:
        return f"{stages}.check({given}{more})"
    kind = check_kind(h)
    if kind == "flag":
        return f"common.check_flag({given})"
    if kind == "choice":
        return f"common.check_choice({given}, {h.choices!r})"
    if kind == "learning_rate" or h.interval is None:
        return ""
    bounds = (
        f"{_num(h.interval.low)}, {_num(h.interval.high)}, {h.interval.low_closed}, {h.interval.high_closed}"
    )
    if kind == "option":
        extra = (", integer=True" if h.kind == "int" else "") + (
            ", zero_is_off=True" if h.zero_is_off else ""
        )
        return f"common.check_option({given}, {bounds}{extra}{more})"
    return f"common.check_float({given}, {bounds}{more})"


def check_kind(h) -> str:
    """How hyperparameter ``h`` is checked (``runtime/common.py``'s ``Check.kind``): "flag", "choice",
    "learning_rate", "option" (None allowed: its default is None) or "float"."""
    if h.kind == "bool":
        return "flag"
    if h.kind in ("choice", "learning_rate"):
        return h.kind
    return "option" if h.optional else "float"


def check_spec(h) -> str:
    """The check of hyperparameter ``h`` as a table entry (``runtime/common.py``'s ``Check``): what
    ``_check_call`` runs, for a module that keeps its checks as a table (torch's)."""
    kind = check_kind(h)
    args = [f'"{kind}"'] + (
        [f'"{h.interval}"'] if h.interval is not None and kind in ("option", "float") else []
    )
    if kind == "option":
        args += ["integer=True"] if h.kind == "int" else []
        args += ["zero_is_off=True"] if h.zero_is_off else []
    if kind == "choice":
        args += [f"choices={h.choices!r}"]
    return f"common.Check({', '.join(args)})"


def _num(x: float) -> str:
    if x == float("inf"):
        return "math.inf"
    if x == float("-inf"):
        return "-math.inf"
    return repr(float(x))


def ruff_command() -> list[str]:
    exe = shutil.which("ruff", path=str(pathlib.Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        raise RuntimeError("optforge build formats its output with ruff; install it: pip install -e '.[dev]'")
    return [exe]


def format_source(text: str, filename: str) -> str:
    """Format with ruff (line length 110, the project's setting) and drop unused imports."""
    # --isolated: the output must not depend on configuration files found where the build runs
    config = [
        "--isolated",
        "--config",
        "line-length=110",
        "--config",
        "target-version='py311'",
        "--config",
        "lint.isort.known-first-party=['optforge']",
    ]
    fixed = subprocess.run(
        ruff_command()
        + ["check", "--fix", "--select", "F401,I", "--quiet", *config, "--stdin-filename", filename, "-"],
        input=text,
        capture_output=True,
        text=True,
    )
    if fixed.returncode not in (0, 1):
        raise RuntimeError(f"ruff check failed on {filename}:\n{fixed.stderr}")
    out = subprocess.run(
        ruff_command() + ["format", *config, "--stdin-filename", filename, "-"],
        input=fixed.stdout or text,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(
            f"ruff could not format the generated {filename} (a template bug):\n{out.stderr}\n{text}"
        )
    return out.stdout


def _defined(condition: sp.Basic, section: Section) -> sp.Basic:
    """A test of the tensor's shape (``matrix and not tall``) written with what its names are computed from
    in ``section`` (``np.ndim(w) == 2 and not rows(w) > cols(w)``): testable before the loop's body computes
    them, where its scratch buffers are taken."""
    defined = {ssa(a.target, a.version): a.expr for a in section.body}
    for _ in range(len(defined) + 1):
        named = {s: defined[s] for s in condition.free_symbols if s in defined}
        if not named:
            break
        condition = condition.xreplace(named)
    return condition


def _unpacked(names: list[str]) -> str:
    """The targets of a tuple unpacking: ``a, b`` (``a,`` for one)."""
    return f"{', '.join(names)}{',' if len(names) == 1 else ''}"


def tensor_test(test: sp.Basic) -> dict[str, Any]:
    """The test of the tensors a kernel module takes (``Program.kernel_class``), as its template prints it:
    Python over the shape (``code``), read by the hyperparameters it names (``hypers``), and as maths."""
    return {
        "code": ShapeTestPrinter().doprint(test),
        "text": math_text(test),
        "literal": repr(math_text(test)),
        "hypers": sorted({getattr(x, "option", None) or x.name for x in test.free_symbols if x.name != "w"}),
    }


def _kept_hypers(s: StateVar) -> list[str]:
    """The hyperparameters a state's per-tensor test reads (``StateVar.kept``), by name."""
    if s.kept is sp.true:
        return []
    return sorted({getattr(x, "option", None) or x.name for x in s.kept.free_symbols if x.name != "w"})


def _scope(s: StateVar) -> str:
    """A state's scope as the runtime reads it (``common.state_shape``): ``element``, ``tensor``,
    ``global``, or ``element/-1`` (axes reduced to length 1: a row or a column of a matrix)."""
    kind = {Scope.ELEMENT: "element", Scope.TENSOR: "tensor", Scope.GLOBAL: "global"}[s.scope]
    return kind + "".join(f"/{token(axis)}" for axis in s.reduced)
