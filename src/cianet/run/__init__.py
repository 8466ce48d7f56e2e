"""Shared run plumbing: what training, evaluation, inference and the benchmark all need about a run.

Modules (each imports only the core and other ``cianet.run`` modules, never the layers above):

- :mod:`~cianet.run.device`       device, seeding, torchrun/DDP environment
- :mod:`~cianet.run.networks`     networks from a config, and from saved weights
- :mod:`~cianet.run.checkpoints`  the model and alignment checkpoints: one versioned writer and reader each
- :mod:`~cianet.run.bundle_file`  the model bundle file: its writer, reader and validation
- :mod:`~cianet.run.bundle_format` the bundle on disk: safetensors with a JSON header (torch-free to read)
- :mod:`~cianet.run.protocol`     a run's image lists (``RunData``) and its ``split.json``
- :mod:`~cianet.run.pairing`      negative pairing of a run and its ``pairs.json``
- :mod:`~cianet.run.datasets`     images at the run's size with their negatives, labels and boxes
- :mod:`~cianet.run.loaders`      the train and test loaders (no side effects)
- :mod:`~cianet.run.forward`      alignment of a batch, network inputs, grid logits
- :mod:`~cianet.run.scoring`      the paper's evaluation of a model on a loader, and ``metrics.json``
- :mod:`~cianet.run.run_folder`   claiming the run folder of ``train``/``train-align`` (and adopting old ones)
"""
