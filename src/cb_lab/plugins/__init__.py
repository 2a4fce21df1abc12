"""Plugin hooks of the cb_lab scheduler."""
