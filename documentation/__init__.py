"""The documentation, rendered from the rules: pages (`pages.py`), their LaTeX (`latex.py`), the plots
(`plots.py`, `optforge plots`) and the HTML site (`site.py`, `optforge site`)."""
