"""The optforge compiler: rules (SymPy) -> IR -> passes -> backend modules."""

from .dsl import Rule
from .errors import BackendError, RuleError
from .pipeline import compile_rule

__all__ = ["BackendError", "Rule", "RuleError", "compile_rule"]
