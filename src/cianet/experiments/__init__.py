"""Experiments: what trains and then measures, end to end (``cianet demo``, ``cianet experiment``).

Each module here orchestrates the layers below it (data, training, evaluation) for one study and resumes from
what its output folder already holds:

- :mod:`~cianet.experiments.demo`        the whole pipeline on the phantom, with a report and the viewer's page
- :mod:`~cianet.experiments.tables`      the paper's tables (and the phantom's oracle checks): variants x folds x seeds
- :mod:`~cianet.experiments.evidence`    the pre-registered evidence experiment (docs/method.md, "Evidence")
- :mod:`~cianet.experiments.pool_study`  CIA-Net on a seed's phantom with ever larger negative pools
- :mod:`~cianet.experiments.plans`       what they run (names, rows, seeds, sizes), torch-free for ``--help``

What they measure with (paired comparisons of runs, reports) lives in :mod:`cianet.evaluation`, which never
trains; only :mod:`cianet.commands` sits above this package.
"""
