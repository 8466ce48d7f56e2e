"""The synthetic chest X-ray phantom: data sets with known ground truth, written as real ones are laid out.

- :mod:`cianet.phantom.anatomy`: the procedural chest (an analytic density image in the patient frame).
- :mod:`cianet.phantom.findings`: the 14 findings, their geometry and what each does to the density image.
- :mod:`cianet.phantom.generator`: rendering (deformation, noise, boxes), the data set plan (patients, labels,
  priors, twins, extra negatives, real backgrounds) and :func:`generate_dataset`, which writes the NIH layout.
- :mod:`cianet.phantom.layouts`: the phantom re-expressed in every other layout cianet reads (``--layout``).

The phantom sits in the core beside :mod:`cianet.data` and imports it one way only: it re-reads what it wrote
with the data set readers (``cianet.data.nih``, ``cianet.data.index``, ``cianet.data.priors``); nothing in
``cianet.data`` imports the phantom.
"""

from cianet.phantom.generator import POOL_ONLY_FILE, TWINS_DIR, generate_dataset
from cianet.phantom.layouts import LAYOUTS, write_layout

__all__ = ["LAYOUTS", "POOL_ONLY_FILE", "TWINS_DIR", "generate_dataset", "write_layout"]
