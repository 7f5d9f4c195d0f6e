"""Run-time support for generated optimizers: argument checks and container handling.

Pure Python (plus the backend the caller already uses); it never imports SymPy
or jinja2, so importing a generated optimizer stays cheap.
"""
