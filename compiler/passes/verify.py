"""The verifier: invariants every pass must keep. Run between passes in tests.

A failure here is a bug in the compiler, not in the rule: it raises
``CompilerBug`` naming the rule, the case and the statement.
"""

from __future__ import annotations

from ..dsl import RESERVED
from ..ir import Form, Program, Role, Scope, Section, SectionKind, base, version
from .scope import scope_of, scopes_of


class CompilerBug(AssertionError):
    pass


def verify(program: Program) -> Program:
    scopes = scopes_of(program)
    # the front passes (before the fork) leave the in-place form; derive_increment sets the increment form
    forbidden = Role.UPDATE if program.form == Form.IN_PLACE else Role.PARAM
    for n, case in enumerate(program.cases):
        where = f"rule '{program.rule}', case {n} ({case.condition}), {program.form} form"
        body, sections = case.body, case.sections
        if sections:
            flat = tuple(a for s in sections for a in s.body if a.role != Role.REPLAY)
            if len(flat) != len(body):
                raise CompilerBug(f"{where}: the sections hold {len(flat)} statements, the body {len(body)}")
            _check_sections(where, sections)
            body = tuple(a for s in sections for a in s.body)
        _check_body(program, where, body, scopes)
        if any(a.role == forbidden for a in body):
            raise CompilerBug(
                f"{where}: the {program.form} form assigns `{'w' if forbidden == Role.PARAM else 'update'}`"
            )
    return program


def _check_sections(where: str, sections: tuple[Section, ...]) -> None:
    for s in sections:
        for a in s.body:
            if s.kind == SectionKind.STEP and a.scope > Scope.GLOBAL:
                raise CompilerBug(
                    f"{where}: `{a.lhs} = {a.expr}` ({a.scope.word}) is in a once-per-step section"
                )


def _check_body(program: Program, where: str, body, scopes) -> None:
    current = {h.name: 0 for h in program.hypers}
    current.update({f"{h.name}?": 0 for h in program.hypers})
    current.update({name: 0 for name in RESERVED})  # what a step starts with: g, w, t, n, the loss
    current.update({s.name: 0 for s in program.states})
    saved = None
    reduced = {a.target for a in body if a.role == Role.REDUCE and a.scope <= Scope.GLOBAL}
    previous = None
    for a in body:
        if saved is not None and (a.section != previous or a.role not in (Role.REPLAY, Role.REDUCE)):
            results = {k: v for k, v in current.items() if k in reduced}  # the end of a pass
            current, saved = {**saved, **results}, None
        if a.role == Role.REPLAY and saved is None:
            saved = dict(current)  # a pass over all tensors: its values are local to it
        previous = a.section
        for s in a.expr.free_symbols:
            name = base(s)
            if name not in current:
                raise CompilerBug(f"{where}: `{a.lhs} = {a.expr}` reads `{s}` before it is defined")
            if version(s) != current[name]:
                raise CompilerBug(
                    f"{where}: `{a.lhs} = {a.expr}` reads `{s}` but `{name}` is at version {current[name]}"
                )
        fresh = a.role in (Role.TEMP, Role.REDUCE)
        expected = 0 if fresh else current.get(a.target, 0) + 1
        replayed = a.role == Role.REPLAY and (a.version == 0 or a.version > current.get(a.target, 0))
        if a.version != expected and not replayed:
            raise CompilerBug(f"{where}: `{a.lhs}` should be version {expected}")
        if scope_of(a.expr, {**scopes, **{k: scopes.get(k, Scope.ELEMENT) for k in current}}) > a.scope:
            raise CompilerBug(f"{where}: `{a.lhs} = {a.expr}` is wider than its scope {a.scope.word}")
        current[a.target] = a.version
