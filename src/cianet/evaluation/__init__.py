"""Evaluating runs: ``cianet evaluate``, paired comparisons of runs, the viewer, the demo's report. Nothing here
trains: the experiments and the demo, which train and then measure with these, are :mod:`cianet.experiments`."""
