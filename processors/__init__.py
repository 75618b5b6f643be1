"""Stream processors: one subpackage each, a pure core plus a thin agent around it."""
