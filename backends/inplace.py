"""Element-wise statements as three-address code into reusable buffers: no temporaries allocated per step.

A NumPy or torch statement such as ``w -= lr * m / ((1 - beta_1**t) * (epsilon + u))`` allocates one array
per operation. This pass takes the statement as the backend printer wrote it, parses it with :mod:`ast`,
and writes one call per array operation with ``out=`` a scratch buffer (a *register*)::

    np.multiply(lr, m, out=_s0)
    np.add(epsilon, u, out=_s1)
    np.multiply(1 - beta_1**t, _s1, out=_s1)
    np.divide(_s0, _s1, out=_s0)
    w -= _s0

Python evaluates ``a * b / c`` as ``(a * b) / c`` with the same operand types, and so do the calls: the same
operations in the same order on the same dtypes, so the results are those of the printed expression, bit
for bit. Sub-expressions that read no per-element array stay Python (scalars, per-tensor values). The last
operation of an overwrite (``u[...] = ...``) writes into the target itself; a named element-wise temporary
(``m_hat``) keeps its own register for the rest of the tensor's statements. Anything the pass does not
know (a select, a comparison, a call without ``out=``) is left as the printed expression: correct, and
allocating, as before.

The registers are views of one buffer per dtype that the optimizer keeps (``runtime.*_support.scratch``),
shaped like the tensor: the memory is the largest tensor times the number of registers, allocated once.
"""

from __future__ import annotations

import ast
import dataclasses


@dataclasses.dataclass(frozen=True)
class Ops:
    """A backend's element-wise calls that take ``out=``."""

    binary: dict[type, str]  # ast operator -> call
    negative: str
    copy: str  # the method that copies an array
    #: element-wise calls (as printed) that take ``out=``
    calls: frozenset[str]
    #: calls that reduce an array to a scalar: their argument goes into a register first
    reductions: frozenset[str]
    #: calls whose ``out=`` must have the input's dtype (torch's abs, neg, sign, clamp): where the buffer
    #: is wider (float32 parameters with float64 state), the call is made as printed and copied in
    same_dtype: frozenset[str] = frozenset()
    #: torch's compound in-place methods: ``x.add_(y, alpha=c)``, ``x.addcmul_(a, b)``, ``x.addcdiv_(a, b)``
    #: and ``torch.add(x, y, alpha=c)``, one pass instead of two. They may fuse the multiply and the add
    #: (one rounding instead of two): the results differ from the printed expression's in the last bit.
    compound: bool = False
    #: the copy of an array as printed, and the call that copies it into a scratch buffer instead
    copy_call: str = ""
    copy_into: str = ""


NUMPY = Ops(
    binary={
        ast.Add: "np.add",
        ast.Sub: "np.subtract",
        ast.Mult: "np.multiply",
        ast.Div: "np.divide",
        ast.Pow: "np.power",
    },
    negative="np.negative",
    copy=".copy()",
    calls=frozenset(
        {"np.sqrt", "np.abs", "np.sign", "np.exp", "np.log", "np.maximum", "np.minimum", "np.clip"}
    ),
    reductions=frozenset({"np.sum", "np.max"}),
    copy_call="np.copy",
    copy_into="np.copyto({out}, {x})",
)

TORCH = Ops(
    binary={
        ast.Add: "torch.add",
        ast.Sub: "torch.sub",
        ast.Mult: "torch.mul",
        ast.Div: "torch.div",
        ast.Pow: "torch.pow",
    },
    negative="torch.neg",
    copy=".clone()",
    calls=frozenset(
        {
            "torch.sqrt",
            "torch.abs",
            "torch.sign",
            "torch.exp",
            "torch.log",
            "torch.special.erf",
            "torch.maximum",
            "torch.minimum",
            "torch.clamp",
        }
    ),
    reductions=frozenset({"torch.sum", "torch.amax"}),
    same_dtype=frozenset({"torch.abs", "torch.neg", "torch.sign", "torch.clamp"}),
    compound=True,
    copy_call="torch.clone",
    copy_into="{out}.copy_({x})",
)


class Registers:
    """The scratch buffers of one pass over the tensors: ``_s0``, ``_s1``, ...; freed ones are reused."""

    def __init__(self) -> None:
        self.count = 0
        self.free: list[str] = []
        self.named: dict[str, str] = {}  # element-wise temporary -> its register, for the rest of the pass

    def take(self) -> str:
        if self.free:
            return self.free.pop()
        self.count += 1
        return f"_s{self.count - 1}"

    def give(self, register: str | None) -> None:
        if register is not None and register not in self.named.values() and register not in self.free:
            self.free.append(register)

    def of(self, name: str) -> str:
        if name not in self.named:
            self.named[name] = self.take()
        return self.named[name]

    def names(self) -> list[str]:
        return [f"_s{i}" for i in range(self.count)]


class ThreeAddress:
    """Rewrites one printed statement; ``elements`` are the names that hold per-element arrays."""

    def __init__(self, ops: Ops, elements: set[str], registers: Registers) -> None:
        self.ops = ops
        self.elements = elements
        self.regs = registers
        self.lines: list[str] = []
        self.held: list[str] = []  # registers read by a reduction in the statement being written
        self.copies: set[int] = set()  # indices of the lines that copy into a register
        self.branched = False  # whether the statement last written became ``if`` blocks

    # -- what a node is -----------------------------------------------------------------

    def _call_name(self, node: ast.AST) -> str:
        return ast.unparse(node.func) if isinstance(node, ast.Call) else ""

    def is_element(self, node: ast.AST) -> bool:
        """Whether the node's value is a per-element array (a reduction's is not)."""
        if isinstance(node, ast.Name):
            return node.id in self.elements
        if isinstance(node, ast.Call) and self._call_name(node) in self.ops.reductions:
            return False
        return any(self.is_element(c) for c in ast.iter_child_nodes(node))

    # -- expressions ----------------------------------------------------------------------

    def fold(self, node: ast.AST, absorb: bool = False) -> ast.AST | None:
        """torch: a product or quotient with Python factors, as (its element-wise part) * (one Python value),
        which Python computes once, in double precision: ``lr * m / ((1 - b**t) * (eps + u))`` becomes
        ``m / (eps + u) * (lr / (1 - b**t))``, two passes fewer. ``absorb``: the caller takes the Python
        value into its call (``addcdiv_(a, b, value=c)``), so one Python factor is worth folding where the
        element-wise part is a quotient. None where nothing is gained."""
        if not (
            self.ops.compound and isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Div))
        ):
            return None
        num: list[ast.AST] = []
        den: list[ast.AST] = []

        def flat(n: ast.AST, top: bool) -> None:
            if isinstance(n, ast.BinOp) and isinstance(n.op, (ast.Mult, ast.Div)):
                flat(n.left, top)
                flat(n.right, top if isinstance(n.op, ast.Mult) else not top)
            else:
                (num if top else den).append(n)

        flat(node, True)
        e_num = [f for f in num if self.is_element(f)]
        e_den = [f for f in den if self.is_element(f)]
        s_num = [f for f in num if not self.is_element(f)]
        s_den = [f for f in den if not self.is_element(f)]
        scalars = len(s_num) + len(s_den)
        if not e_num or not (scalars >= 2 or (absorb and scalars == 1 and e_den)):
            return None  # nothing gained
        scalar = _product(s_num) if s_num else ast.Constant(1.0)
        if s_den:
            scalar = ast.BinOp(scalar, ast.Div(), _product(s_den))
        element = _product(e_num)
        if e_den:
            element = ast.BinOp(element, ast.Div(), _product(e_den))
        return ast.fix_missing_locations(ast.BinOp(element, ast.Mult(), scalar))

    def operand(self, node: ast.AST, out: str | None = None, fold: bool = True) -> tuple[str, str | None]:
        """(code, register it occupies or None): the node evaluated, element-wise operations into registers."""
        if not self.is_element(node):
            return self.scalar(node), None
        if isinstance(node, ast.Name):
            return node.id, None
        folded = self.fold(node) if fold else None
        if folded is not None:
            return self.operand(folded, out, fold=False)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            for x, c in ((node.left, node.right), (node.right, node.left)):
                if _negated(x) and not self.is_element(c) and self.is_element(x.operand):
                    # (-x)*c is x*(-c), exactly: one pass fewer
                    scaled = ast.BinOp(x.operand, ast.Mult(), ast.UnaryOp(ast.USub(), c))
                    return self.operand(ast.fix_missing_locations(scaled), out)
        if self.ops.compound and isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
            scaled = self._scaled(self.fold(node.right, absorb=True) or node.right)
            if scaled is not None and self.is_element(node.left):  # a + c*x in one call
                x, c = scaled
                c = c if isinstance(node.op, ast.Add) else f"-({c})"
                return self.emit(self.ops.binary[ast.Add], [node.left, x], [f"alpha={c}"], out)
        if isinstance(node, ast.BinOp) and type(node.op) in self.ops.binary:
            fn = self.ops.binary[type(node.op)]
            if isinstance(node.op, ast.Pow) and _is_two(node.right):
                fn = "np.square" if fn == "np.power" else fn  # NumPy's x**2 is np.square
            args = [node.left] if fn == "np.square" else [node.left, node.right]
            return self.emit(fn, args, [], out)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return self.emit(self.ops.negative, [node.operand], [], out)
        if isinstance(node, ast.Call) and self._call_name(node) == self.ops.copy_call:
            x, reg = self.operand(node.args[0])
            self.regs.give(reg)
            dest = out or self.regs.take()
            self.lines.append(self.ops.copy_into.format(out=dest, x=x))
            self.copies.add(len(self.lines) - 1)  # a statement, not an expression that returns ``dest``
            return dest, (None if out else dest)
        if isinstance(node, ast.Call) and self._call_name(node) in self.ops.calls:
            return self.emit(self._call_name(node), node.args, node.keywords, out)
        return self.scalar(node), None  # not known here: the printed expression, as before

    def emit(self, fn: str, args: list[ast.AST], keywords: list[ast.keyword], out: str | None):
        printed, held = [], []
        for a in args:
            code, reg = self.operand(a)
            printed.append(code)
            held.append(reg)
        for reg in held:  # the result may go into an argument's register: element-wise, that is safe
            self.regs.give(reg)
        dest = out or self.regs.take()
        extra = [k if isinstance(k, str) else ast.unparse(k) for k in keywords]
        call = f"{fn}({', '.join(printed + extra + [f'out={dest}'])})"
        if fn in self.ops.same_dtype:
            plain = f"{fn}({', '.join(printed + extra)})"
            call = f"{call} if {printed[0]}.dtype == {dest}.dtype else {dest}.copy_({plain})"
        self.lines.append(call)
        return dest, (None if out else dest)

    def scalar(self, node: ast.AST) -> str:
        """A node printed as Python; a reduction's argument is evaluated into a register first."""
        node = _Reductions(self).visit(_copy(node))
        return ast.unparse(node)

    # -- statements -------------------------------------------------------------------------

    def bind(self, name: str, code: str) -> list[str]:
        """``name = code``: an element-wise value goes into ``name``'s own register."""
        return self._branches(code, lambda node: self._bind(name, node))

    def _bind(self, name: str, node: ast.AST) -> None:
        if isinstance(node, ast.Name) and node.id in self.regs.named and node.id != name:
            # an alias of a register would change when its owner is written again
            self.lines.append(f"{name} = {node.id}{self.ops.copy}")
            return
        if isinstance(node, ast.Name) or not self.is_element(node):
            self.lines.append(f"{name} = {self.scalar(node)}")
            return
        reg = self.regs.of(name)
        code, _ = self.operand(node, out=reg)
        if code != reg:  # not an operation: the printed expression, as before
            self.regs.named.pop(name)
            self.regs.give(reg)
            self.lines.append(f"{name} = {code}")
            return
        if len(self.lines) - 1 in self.copies:
            self.lines.append(f"{name} = {reg}")
        else:
            self.lines[-1] = f"{name} = {self.lines[-1]}"

    def _scaled(self, node: ast.AST) -> tuple[ast.AST, str] | None:
        """(x, c) when the node is an element-wise x times a Python value c."""
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            for x, c in ((node.right, node.left), (node.left, node.right)):
                if self.is_element(x) and not self.is_element(c):
                    return x, self.scalar(c)
        return None

    def compound(self, kind: str, name: str, node: ast.AST) -> bool:
        """torch: ``x += c*y``, ``x += c*a*b`` and ``x += c*a/b`` (or ``-=``; c a Python value, 1 if none) as
        one in-place call."""
        node = self.fold(node, absorb=True) or node
        scaled = self._scaled(node)
        x, c = scaled if scaled is not None else (node, None)
        if isinstance(x, ast.BinOp) and isinstance(x.op, ast.Pow) and _is_two(x.right):
            x = ast.BinOp(x.left, ast.Mult(), x.left)  # torch's x**2 is x*x
        two = isinstance(x, ast.BinOp) and isinstance(x.op, (ast.Mult, ast.Div))
        two = two and self.is_element(x.left) and self.is_element(x.right)
        if not two and scaled is None:
            return False
        if kind == "sub":
            c = "-1" if c is None else f"-({c})"
        if two:
            a, reg_a = self.operand(x.left)
            b, reg_b = self.operand(x.right)
            method = "addcmul_" if isinstance(x.op, ast.Mult) else "addcdiv_"
            self.lines.append(f"{name}.{method}({a}, {b}{'' if c is None else f', value={c}'})")
            self.regs.give(reg_a)
            self.regs.give(reg_b)
        else:
            value, reg = self.operand(x)
            self.lines.append(f"{name}.add_({value}, alpha={c})")
            self.regs.give(reg)
        return True

    def update(self, kind: str, form: str, name: str, code: str) -> list[str]:
        """``x += d`` (kind "add") or ``x -= d`` ("sub"); ``form`` says how: the value into a register, then
        the update (torch: one compound call where the value is a product or a quotient)."""

        def one(node: ast.AST) -> None:
            if self.ops.compound and self.compound(kind, name, node):
                return
            value, reg = self.operand(node)
            self.lines.append(form.format(name=name, value=value))
            self.regs.give(reg)

        return self._branches(code, one)

    def overwrite(self, form: str, name: str, code: str) -> list[str]:
        """``name`` takes the value: its last operation writes into ``name`` itself; ``form`` copies
        anything else in (``"{name}[...] = {value}"``)."""

        def one(node: ast.AST) -> None:
            value, _ = self.operand(node, out=name)
            if value != name:
                self.lines.append(form.format(name=name, value=value))

        return self._branches(code, one)

    def _branches(self, code: str, write) -> list[str]:
        """A statement whose value is ``a if cond else b`` with a Python condition: an ``if`` block each."""
        self.lines = []
        self.copies = set()
        self.branched = False
        node = ast.parse(code, mode="eval").body

        def visit(n: ast.AST, depth: int) -> None:
            if isinstance(n, ast.IfExp) and not self.is_element(n.test):
                self.branched = True
                # a branch that leaves the value as it is (``x if t > 1 else w`` into x) writes nothing,
                # and Python has no empty block: the test is negated, or dropped
                test = self.scalar(n.test)
                start = len(self.lines)
                visit(n.body, depth + 1)
                body = self.lines[start:]
                del self.lines[start:]
                visit(n.orelse, depth + 1)
                orelse = self.lines[start:]
                del self.lines[start:]
                if body:
                    self.lines += [f"if {test}:"] + ["    " + line for line in body]
                    if orelse:
                        self.lines += ["else:"] + ["    " + line for line in orelse]
                elif orelse:
                    self.lines += [f"if not ({test}):"] + ["    " + line for line in orelse]
                return
            write(n)

        visit(node, 0)
        for reg in self.held:
            self.regs.give(reg)
        self.held = []
        return self.lines


class _Reductions(ast.NodeTransformer):
    """Inside a scalar expression, ``np.sum(g**2)`` becomes ``np.sum(_s0)`` after ``np.square(g, out=_s0)``;
    not under a conditional, where the argument may not be computable."""

    def __init__(self, ta: ThreeAddress) -> None:
        self.ta = ta

    def visit_IfExp(self, node):
        return node

    def visit_BoolOp(self, node):
        return node

    def visit_Call(self, node):
        if self.ta._call_name(node) in self.ta.ops.reductions and len(node.args) == 1:
            code, reg = self.ta.operand(node.args[0])
            if reg is not None:  # read by the statement: free after it
                self.ta.held.append(reg)
            node.args = [ast.parse(code, mode="eval").body]
            return node
        return self.generic_visit(node)


def _copy(node: ast.AST) -> ast.AST:
    return ast.parse(ast.unparse(node), mode="eval").body


def _product(factors: list[ast.AST]) -> ast.AST:
    out = factors[0]
    for f in factors[1:]:
        out = ast.BinOp(out, ast.Mult(), f)
    return out


def _negated(node: ast.AST) -> bool:
    return isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)


def _is_two(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value == 2 and not isinstance(node.value, bool)
