"""Training: CIA-Net and the baseline (:mod:`~cianet.training.loop`), the alignment network
(:mod:`~cianet.training.alignment`)."""
