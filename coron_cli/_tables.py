"""Regenerate the precomputed tables of :mod:`coron_cli.core`.

``python -m coron_cli._tables`` rewrites ``coron_cli/core/_sharpness_table.py``: the
outlier search's "sharper than any point source" bound
(:func:`coron_cli.core.badpix.sharpness_bound`) for model FWHMs on a grid, so that a tool
does not spend ~1 s computing it at every start. Run it after changing how the bound is
computed; ``tests/core/test_outliers.py`` checks the table against the computation.
"""

import os
import sys

import numpy as np

#: model FWHM grid (pixels): the bound of any FWHM inside it comes from the table
GRID = tuple(round(float(v), 2) for v in np.arange(0.80, 6.001, 0.05))


def main():
    from .core import badpix

    path = os.path.join(os.path.dirname(__file__), "core", "_sharpness_table.py")
    rows = []
    for k, f in enumerate(GRID):
        b = badpix._sharpness_bound.__wrapped__(f)
        rows.append(f"    {f!r}: ({b.ratio!r},\n           {b.envelope!r}),")
        print(f"[{k + 1}/{len(GRID)}] model FWHM {f:.2f} px", file=sys.stderr)
    text = ('"""Precomputed sharpness bounds: written by ``python -m coron_cli._tables``."""\n\n'
            "# model FWHM (pixels) -> (ratio, envelope) of core.badpix.SharpnessBound\n"
            "TABLE = {\n" + "\n".join(rows) + "\n}\n")
    tmp = path + ".part"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
    print(path)


if __name__ == "__main__":
    main()
