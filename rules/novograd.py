"""NovoGrad as NVIDIA Clara / OpenSeq2Seq define it (seed page 000), and its TF1 graph-mode variant.

The intended rule (what the page describes and what TensorFlow runs eagerly):
one second moment ``v`` per tensor, an EMA of ``||g||^2`` started at the first
non-zero value (the code tests ``v == 0``, not the step), epsilon inside the
square root, weight decay added after normalisation, ``(1 - beta1)`` only with
``grad_averaging``, and the learning rate outside the accumulator (TF's
MomentumOptimizer: ``w <- w - lr*m``; the page's ``m <- beta1*m + lr*[...]`` is
the same only for a constant learning rate).

``NovoGradTF1``: in TF1 graph mode, the mode OpenSeq2Seq and Clara train in, the
EMA variable is never written back, so every step normalises by the current
gradient alone (``v_t = ||g_t||^2``; REFERENCE_RULES.md section 1.2). It is the
same rule with one equation replaced; ``v`` then no longer persists and costs
no memory.
"""

from optforge.compiler.dsl import Eq, Ne, Rule, g, sqrt, tensor_sumsq, w, where

NovoGrad = Rule(
    "NovoGrad",
    module="novograd",
    title="NovoGrad (NVIDIA Clara / OpenSeq2Seq)",
    summary="SGD with layer-wise normalised gradients: one second moment per tensor, the EMA of ||g||^2;"
    " half of Adam's memory.",
    references=(
        "Ginsburg et al., Stochastic Gradient Methods with Layer-wise Adaptive Moments for Training of Deep"
        " Networks, 2019",
        "NVIDIA Clara `ai4med.libs.optimizers.NovoGrad`; OpenSeq2Seq `open_seq2seq/optimizers/novograd.py`",
    ),
)
lr = NovoGrad.learning_rate(1.0)
beta1 = NovoGrad.hyper("beta1", 0.95, "[0, 1]", "decay rate of the momentum", latex=r"\beta_1")
beta2 = NovoGrad.hyper(
    "beta2", 0.98, "[0, 1]", "decay rate of the per-tensor second moment", latex=r"\beta_2"
)
epsilon = NovoGrad.hyper("epsilon", 1e-8, "[0, inf)", "added to the second moment inside the square root")
weight_decay = NovoGrad.hyper(
    "weight_decay",
    0.0,
    "[0, inf)",
    "L2 term added to the normalised gradient (coupled, goes through the momentum)",
)
grad_averaging = NovoGrad.flag("grad_averaging", False, "scale the normalised gradient by (1 - beta1)")
use_nesterov = NovoGrad.flag("use_nesterov", False, "Nesterov momentum")
v = NovoGrad.state("v", 0, "per-tensor second moment: EMA of ||g||^2", scope="tensor")
m = NovoGrad.state("m", 0, "momentum of the normalised gradients")

NovoGrad.assign(
    v, where(Eq(v, 0), tensor_sumsq(g), beta2 * v + (1 - beta2) * tensor_sumsq(g)), "second moment"
)
u = NovoGrad.let("u", g / sqrt(v + epsilon), "normalised gradient")
NovoGrad.assign(u, u + where(Ne(weight_decay, 0), weight_decay * w, 0), "weight decay")
NovoGrad.assign(u, where(grad_averaging, (1 - beta1) * u, u), "gradient averaging")
NovoGrad.assign(m, beta1 * m + u, "momentum")
NovoGrad.assign(w, w - lr * where(use_nesterov, u + beta1 * m, m), "parameter update")

NovoGrad.config("lr_0.01", learning_rate=0.01)
NovoGrad.config("averaging", learning_rate=0.01, grad_averaging=True, weight_decay=0.01)
NovoGrad.config("nesterov", learning_rate=0.01, use_nesterov=True, beta2=0.5)
NovoGrad.config(
    "all", learning_rate=0.01, use_nesterov=True, grad_averaging=True, weight_decay=0.1, epsilon=1e-3
)

NovoGradTF1 = NovoGrad.derive(
    "NovoGradTF1",
    module="novograd_tf1",
    title="NovoGrad as TF1 graph mode runs it (OpenSeq2Seq, Clara training runs)",
    summary="The OpenSeq2Seq/Clara class in TF1 graph mode: its EMA variable is never written back, so every step"
    " normalises by the current gradient's norm alone, v_t = ||g_t||^2.",
)
NovoGradTF1.replace(v, tensor_sumsq(g), "second moment (no EMA in graph mode)")
NovoGradTF1.config("lr_0.01", learning_rate=0.01)
NovoGradTF1.config("all", learning_rate=0.01, use_nesterov=True, grad_averaging=True, weight_decay=0.1)

RULES = [NovoGrad, NovoGradTF1]
