"""Evaluating runs: ``cianet evaluate``, the paper's experiment tables, the demo and its report."""
