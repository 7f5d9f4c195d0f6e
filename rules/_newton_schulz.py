"""The quintic Newton-Schulz iteration that Muon orthogonalises a matrix with, as the rules write it.

``newton_schulz(rule, X, tall, ...)`` appends the iteration's equations to ``rule``: ``steps`` times, the
Gram matrix ``A = X X^T`` (``m x m``) and ``B = b A + c A A``, the Gram matrix of a tall matrix ``C = X^T X``
(``n x n``) and ``D = b C + c C C``, then ``X <- a X + (X D if tall else B X)``: the products on the smaller
Gram matrix, without transposing ``X`` (the compiler computes only the branch each tensor takes). A
library's order of the operations is kept: optax forms ``c A`` before the product (``(c A) A``), torch's
``addmm`` scales the product (``c (A A)``): ``scaled_first``.
"""

from optforge.compiler.dsl import matmul, transpose, where


def newton_schulz(rule, X, tall, coefficients: tuple[float, float, float], steps: int, *, scaled_first: bool):
    """Append ``steps`` Newton-Schulz steps on the ``let`` ``X`` to ``rule`` (see the module)."""
    a, b, c = coefficients

    def polynomial(M):
        return b * M + (matmul(c * M, M) if scaled_first else c * matmul(M, M))

    for k in range(steps):
        gram, tall_gram = matmul(X, transpose(X)), matmul(transpose(X), X)  # m x m, n x n
        if k == 0:
            A = rule.let("A", gram, "Gram matrix (m x m)", latex="A")
            B = rule.let("B", polynomial(A), "Newton-Schulz polynomial", latex="B")
            C = rule.let("C", tall_gram, "Gram matrix of a tall matrix (n x n)", latex="C")
            D = rule.let("D", polynomial(C), "its Newton-Schulz polynomial", latex="D")
        else:
            rule.assign(A, gram, "Gram matrix (m x m)")
            rule.assign(B, polynomial(A), "Newton-Schulz polynomial")
            rule.assign(C, tall_gram, "Gram matrix of a tall matrix (n x n)")
            rule.assign(D, polynomial(C), "its Newton-Schulz polynomial")
        rule.assign(X, a * X + where(tall, matmul(X, D), matmul(B, X)), "Newton-Schulz step")
