"""Compiler passes: each a pure function Program -> Program, in its own file."""
