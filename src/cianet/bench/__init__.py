"""Benchmarks: ``cianet bench`` (:mod:`~cianet.bench.speed`) and two side studies run as modules,
``python -m cianet.bench.cache_read`` (cache vs decoding real images) and ``python -m cianet.bench.cpu_options``
(threads, bfloat16, torch.compile, pairing chunk sizes). They measure; they never change how the library runs.
"""
