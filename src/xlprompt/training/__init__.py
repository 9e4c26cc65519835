"""Training: the one loop (fit) and the converged linear probe."""
