"""Gallery order: the executed ``plot_NN_*`` examples first (by number), then the scripts
that are only shown (benchmarks, basis design), by file name."""

import os


class ExamplesFirst:
    """Sort key for sphinx-gallery's ``within_subsection_order``."""

    def __init__(self, src_dir):
        self.src_dir = src_dir

    def __call__(self, filename):
        name = os.path.basename(filename)
        return (not name.startswith("plot_"), name)

    def __repr__(self):  # sphinx-gallery keys its cache on the repr
        return "<ExamplesFirst>"
