"""The docs pages' LaTeX and labels for names users write (issue 19, docs rendering).

Each throwaway rule shows one way a name was misrendered: a time subscript added on top of a subscript
(``m_1_{t}``), to a name that already has a time index (``\\alpha_t_{t}``, ``\\beta_{3,t,t}``), an alias
that reads ``d_{t-1} = d_{t-1}``, a reassigned value with the same name on both sides, a label lower-cased.
The registry's pages are checked for the same classes of mistake.
"""

from __future__ import annotations

import re

import pytest
from cases import RULES, compiled

from optforge.compiler.dsl import Rule, g, w
from optforge.documentation.latex import _sub
from optforge.documentation.pages import page

# a subscript right after a subscript: m_1_{t}, \alpha_t_{t}, x_{0}_{t}
DOUBLE_SUBSCRIPT = re.compile(r"(?<!\\)_(\{[^{}]*\}|[A-Za-z0-9]|\\[A-Za-z]+)_")
#: a prime is a superscript: ``a'^{2}``, ``a'_{t}^{2}`` and ``g^{prev}'`` are KaTeX's "Double superscript"
#: (``{a'_{t}}^{2}`` and ``{g^{prev}}'`` are not)
DOUBLE_SUPERSCRIPT = re.compile(r"'(_(\{[^{}]*\}|[A-Za-z0-9]))?\^|\^(\{(?:[^{}]|\{[^{}]*\})*\}|[A-Za-z0-9])'")


def _equations(md: str) -> list[tuple[str, str]]:
    """(label, LaTeX) of each displayed equation of a page."""
    return re.findall(r"([^\n]+):\n\n\$\$\n([^\n]+)\n\$\$", md)


def _page(rule) -> str:
    return page(rule, compiled(rule), None)  # a registered rule's: compiled once per test process


def subscripted_names():
    r = Rule("Subscripts", title="names with subscripts")
    lr = r.learning_rate(0.1)
    m1 = r.state("m_1", 0, "fast EMA", latex="m_1")
    x0 = r.state("x0", 0, "anchor", latex="x_0")
    b3 = r.state("b3", 0, "third moment", latex=r"\beta_{3}")
    a = r.let("alpha_t", 0.5 * m1, "step size", latex=r"\alpha_t")
    b = r.let("b3t", 2 * a, "scaled", latex=r"\gamma_{3,t}")
    r.assign(m1, m1 + 0.1 * (g - m1), "Fast EMA")
    r.assign(x0, x0 + g, "anchor")
    r.assign(b3, b3 + g**3, "third moment")
    r.assign(w, w - lr * (a * m1 + b + x0 + b3), "RMS-scaled gradient")
    return r


def test_time_subscript_is_merged_with_a_subscript_once():
    md = _page(subscripted_names())
    eqs = dict(_equations(md))
    assert eqs["Fast EMA"] == r"m_{1,t} = 0.1 g_t + 0.9 m_{1,t-1}", eqs["Fast EMA"]
    assert eqs["Anchor"].startswith("x_{0,t} = x_{0,t-1}"), eqs["Anchor"]
    assert eqs["Third moment"].startswith(r"\beta_{3,t} = \beta_{3,t-1}"), eqs["Third moment"]
    assert eqs["Step size"].startswith(r"\alpha_t = 0.5 m_{1,t-1}"), eqs["Step size"]
    assert eqs["Scaled"] == r"\gamma_{3,t} = 2 \alpha_t", eqs["Scaled"]
    for label, tex in eqs.items():
        assert not DOUBLE_SUBSCRIPT.search(tex), (label, tex)
        assert not DOUBLE_SUPERSCRIPT.search(tex), (label, tex)
        assert ",t,t" not in tex and "t-1,t" not in tex, (label, tex)


@pytest.mark.parametrize(
    "tex, sub, want",
    [
        ("m", "t", "m_{t}"),
        ("m_1", "t", "m_{1,t}"),
        ("m_{1}", "t-1", "m_{1,t-1}"),
        (r"\alpha_t", "t", r"\alpha_t"),
        (r"\beta_{3,t}", "t", r"\beta_{3,t}"),
        ("d_{t-1}", "t", "d_{t-1}"),
        (r"\hat{m}", "t", r"\hat{m}_{t}"),
        (r"\mathrm{a\_b}", "t", r"\mathrm{a\_b}_{t}"),
        (r"x_\nu", "t", r"x_{\nu,t}"),
        (r"v_{\mathrm{max}}", "t", r"v_{\mathrm{max},t}"),
    ],
)
def test_sub(tex, sub, want):
    assert _sub(tex, sub) == want


def alias_and_reassigned():
    r = Rule("Aliases", title="an alias of the previous state and a reassigned value")
    lr = r.learning_rate(0.1)
    d = r.state("d", 0, "last step")
    prev = r.let("d_prev", d, "previous d", latex="d_{t-1}")
    s = r.let("s", g * 2, "scaled gradient")
    r.assign(s, s + prev, "scaled gradient with the last step")
    r.assign(s, s * 0.5, "halved")
    r.assign(d, -lr * s, "step")
    r.assign(d, d + prev * 0.1, "step with momentum")
    r.assign(w, w + d, "update")
    return r


def test_alias_and_reassigned_values_read_correctly():
    eqs = _equations(_page(alias_and_reassigned()))
    texts = [tex for _, tex in eqs]
    assert texts[0] == r"d_{t-1} \quad \text{(kept before } d \text{ is updated)}", texts[0]
    assert texts[1] == "s_{t} = 2 g_t", texts[1]
    assert texts[2] == "s'_{t} = s_{t} + d_{t-1}", texts[2]
    assert texts[3] == "s''_{t} = 0.5 s'_{t}", texts[3]
    assert texts[4] == r"d_{t} = - \eta_t s''_{t}", texts[4]
    assert texts[5] == "d'_{t} = d_{t} + 0.1 d_{t-1}", texts[5]
    assert texts[6] == "w_{t} = w_{t-1} + d'_{t}", texts[6]
    _no_equation_names_itself(eqs)


def _no_equation_names_itself(eqs):
    """No ``x = x`` and no ``x = ... x ...`` where both are the same version of a value."""
    for label, tex in eqs:
        lhs, sep, rhs = tex.partition(" = ")
        if not sep or lhs == "t":
            continue
        rhs = rhs.split(r" \quad \text{if }")[0]
        assert lhs.strip() != rhs.strip(), (label, tex)
        assert not re.search(rf"(?<![\w'\\{{]){re.escape(lhs.strip())}(?![\w'_}}])", rhs), (label, tex)


def test_labels_are_kept_as_written():
    r = Rule("Labels", title="labels")
    lr = r.learning_rate(0.1)
    m = r.state("m", 0, "m")
    r.assign(m, m + g, "fast EMA")
    r.assign(w, w - lr * m, "RMS-scaled gradient")
    labels = [label for label, _ in _equations(_page(r))]
    assert labels == ["Fast EMA", "RMS-scaled gradient"], labels


@pytest.mark.parametrize("rule", list(RULES.values()), ids=list(RULES))
def test_registered_pages_have_no_double_subscript_or_superscript_or_self_equation(rule):
    eqs = _equations(_page(rule))
    assert eqs
    for label, tex in eqs:
        assert not DOUBLE_SUBSCRIPT.search(tex), (label, tex)
        assert not DOUBLE_SUPERSCRIPT.search(tex), (label, tex)
        assert r"\mathrm{" not in tex or not re.search(r"\\mathrm\{[^}]*(?<!\\)_", tex), (label, tex)
    _no_equation_names_itself(eqs)


# -- issue 18's rendering items: term order, a sum inside a sum, repeated labels, emphasis, required ------


def written_as_the_paper():
    from optforge.compiler.dsl import tensor_sum

    r = Rule("Written", title="as written", summary="keeps w*decay*lr and snake_case as characters")
    lr = r.learning_rate(None, meaning="the rate, w <- w - w*lr*g")
    beta = r.hyper("beta", 0.9, "[0, 1)", "a rate")
    mu = r.let("mu", beta * (1 - 0.5 * 0.96**2), "schedule", latex=r"\mu")
    s = r.let("s", tensor_sum(g + w), "schedule")
    r.assign(w, w - lr * g * s / (1 - mu * beta), "update")
    return r


def test_a_page_reads_as_the_rule_was_written():
    md = _page(written_as_the_paper())
    eqs = _equations(md)
    # a label shared by consecutive equations is said once, above both
    assert md.count("Schedule:") == 1 and "\\mu_{t} = " in md and "s_{t} = " in md, md
    update = next(tex for label, tex in eqs if label == "Update")
    assert r"1 - \beta \mu" in update or r"1 - \mu \beta" in update, update  # not SymPy's -a b + 1
    assert r"\sum \left(g_t + w_{t-1}\right)" in md, md  # the sum of a sum keeps its parentheses
    assert r"w\*lr\*g" in md and r"w\*decay\*lr and snake\_case" in md  # characters, not emphasis
    assert "| `learning_rate`" in md and "| required |" in md and "None (off)" not in md.split("## State")[0]
