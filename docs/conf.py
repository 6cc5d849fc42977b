"""Sphinx configuration for the overlayd documentation."""

from __future__ import annotations

project = "overlayd"
author = "the overlayd developers"
copyright = "2026, the overlayd developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.intersphinx"]
intersphinx_mapping: dict[str, tuple[str, None]] = {}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
nitpicky = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
