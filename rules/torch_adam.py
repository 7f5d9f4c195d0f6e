"""Adam and AdamW as torch.optim defines them (torch 2.13, ``_single_tensor_adam``).

``maximize`` negates the gradient first; Adam's ``weight_decay`` is then L2, added to the gradient
(``g + weight_decay*w``), while AdamW's is decoupled, ``w <- w*(1 - lr*weight_decay)`` before the moments.
Epsilon is added outside the root of the bias-corrected second moment,
``sqrt(v)/sqrt(1 - beta2^t) + eps``, and the step is ``lr/(1 - beta2^t)``. With ``amsgrad`` the
denominator reads the running maximum of the raw second moment ``v`` (optax.amsgrad takes the maximum of
the bias-corrected one). torch's ``betas=(beta1, beta2)`` are two hyperparameters here.
"""

from optforge.compiler.dsl import Ne, Rule, g, maximum, sqrt, t, w, where

TorchAdam = Rule(
    "TorchAdam",
    module="torch_adam",
    title="Adam (torch.optim `Adam`)",
    summary="Adam with torch's epsilon placement (outside the root of the bias-corrected second moment),"
    " L2 weight decay added to the gradient, and the `amsgrad` and `maximize` flags.",
    references=(
        "Kingma and Ba, Adam: A Method for Stochastic Optimization, ICLR 2015",
        "Reddi et al., On the Convergence of Adam and Beyond, ICLR 2018 (amsgrad)",
        "torch.optim.Adam: https://pytorch.org/docs/stable/generated/torch.optim.Adam.html",
    ),
)
lr = TorchAdam.learning_rate(0.001)
beta1 = TorchAdam.hyper(
    "beta1", 0.9, "[0, 1)", "decay rate of the first moment (torch's betas[0])", latex=r"\beta_1"
)
beta2 = TorchAdam.hyper(
    "beta2", 0.999, "[0, 1)", "decay rate of the second moment (torch's betas[1])", latex=r"\beta_2"
)
eps = TorchAdam.hyper(
    "eps", 1e-8, "[0, inf)", "added to the root of the bias-corrected second moment", latex=r"\epsilon"
)
weight_decay = TorchAdam.hyper(
    "weight_decay", 0.0, "[0, inf)", "L2 penalty, added to the gradient", latex=r"\lambda"
)
amsgrad = TorchAdam.flag("amsgrad", False, "divide by the running maximum of the second moment (AMSGrad)")
maximize = TorchAdam.flag("maximize", False, "maximize the objective (the gradient is negated first)")
m = TorchAdam.state("exp_avg", 0, "first moment", latex="m")
v = TorchAdam.state("exp_avg_sq", 0, "second moment", latex="v")
v_max = TorchAdam.state(
    "max_exp_avg_sq", 0, "running maximum of the second moment", exists_if=amsgrad, latex=r"v^{\max}"
)

TorchAdam.assign(g, where(maximize, -g, g), "maximize")
TorchAdam.assign(g, g + weight_decay * w, "L2 weight decay", when=Ne(weight_decay, 0))
TorchAdam.assign(m, m + (1 - beta1) * (g - m), "first moment")
TorchAdam.assign(v, beta2 * v + (1 - beta2) * g**2, "second moment")
TorchAdam.assign(v_max, maximum(v_max, v), "AMSGrad maximum", when=amsgrad)
denom = TorchAdam.let("denom", sqrt(v) / sqrt(1 - beta2**t) + eps, "denominator", latex="d")
TorchAdam.assign(denom, sqrt(v_max) / sqrt(1 - beta2**t) + eps, "AMSGrad denominator", only_if=amsgrad)
TorchAdam.assign(w, w - lr / (1 - beta1**t) * m / denom, "parameter update")

TorchAdam.config(
    "fast_amsgrad_maximize",
    learning_rate=0.01,
    beta1=0.8,
    beta2=0.9,
    eps=1e-4,
    weight_decay=0.1,
    amsgrad=True,
    maximize=True,
)

TorchAdamW = TorchAdam.derive(
    "TorchAdamW",
    module="torch_adamw",
    title="AdamW (torch.optim `AdamW`)",
    summary="torch's Adam with decoupled weight decay, w <- w*(1 - lr*weight_decay) before the moments"
    " (default 0.01).",
    references=(
        "Loshchilov and Hutter, Decoupled Weight Decay Regularization, ICLR 2019",
        "torch.optim.AdamW: https://pytorch.org/docs/stable/generated/torch.optim.AdamW.html",
    ),
)
TorchAdamW.remove(g, occurrence=1)
TorchAdamW.insert(
    w, w * (1 - lr * weight_decay), "decoupled weight decay", before=m, when=Ne(weight_decay, 0)
)
TorchAdamW.set_default("weight_decay", 0.01, meaning="decoupled weight decay, w <- w*(1 - lr*weight_decay)")
TorchAdamW.config(
    "fast_amsgrad_maximize",
    learning_rate=0.01,
    beta1=0.8,
    beta2=0.9,
    eps=1e-4,
    weight_decay=0.1,
    amsgrad=True,
    maximize=True,
)

RULES = [TorchAdam, TorchAdamW]
