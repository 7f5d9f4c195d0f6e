"""Generated modules import only their own framework: no SymPy, no jinja2, no other backend."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from cases import RULES

FORBIDDEN = {
    "numpy": {"sympy", "jinja2", "torch", "jax", "optax", "keras"},
    "jax": {"sympy", "jinja2", "torch", "keras"},
    "torch": {"sympy", "jinja2", "jax", "optax", "keras"},
}


@pytest.mark.parametrize("backend", sorted(FORBIDDEN))
def test_generated_backend_imports_only_its_framework(backend):
    modules = [f"optforge.generated.{backend}.{r.module}" for r in RULES.values()] + [
        f"optforge.generated.{backend}"
    ]
    code = (
        "import sys, json\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert not (loaded & FORBIDDEN[backend]), (
        f"{backend} modules imported {sorted(loaded & FORBIDDEN[backend])}"
    )


def test_importing_optforge_generated_imports_no_framework():
    code = "import sys, optforge.generated; print(sorted(m for m in ('numpy','jax','torch','sympy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_torch_step_on_cpu_with_the_defaults_loads_no_kernels():
    """``fused=None`` (the default) takes Triton's kernels on CUDA parameters only, and Numba's never: a
    step of every rule on CPU parameters imports neither Numba nor optforge's Triton support (torch's own
    optimizer step imports Triton itself, for torch.compile, so Triton's presence says nothing here)."""
    steps = "".join(
        "w = torch.nn.Parameter(torch.zeros(3)); w.grad = torch.ones(3)\n"
        f"optforge.generated.torch.{r.name}([w], lr=0.01).step({'value=1.0' if r.reads_loss else ''})\n"
        for r in RULES.values()
    )
    code = (
        "import sys, json, torch, optforge.generated.torch\n"
        + steps
        + "print(json.dumps(sorted(m for m in ('numba', 'optforge.runtime.triton_support') if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
