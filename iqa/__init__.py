"""Image degradation scoring: noise, blur and compression strength in [0, 1]."""
