"""Stacking of reference exposures into one cube."""

import numpy as np

__all__ = ["stack_cubes"]


def stack_cubes(cubes):
    """Concatenate cubes along their first (integration) axis.

    Parameters
    ----------
    cubes : sequence of ndarray of shape (nint_i, ny, nx)
        The integrations of each exposure, in the order wanted.

    Returns
    -------
    stacked : ndarray of shape (sum(nint_i), ny, nx)
        A new array; the inputs are not modified.
    index : ndarray of shape (sum(nint_i), 2), int
        For every slice, the position of its source cube in `cubes` and the
        integration within it.

    Raises
    ------
    ValueError
        If no cube is given, a cube is not 3-D, or frame sizes differ.
    """
    cubes = list(cubes)
    if not cubes:
        raise ValueError("nothing to stack")
    shape = None
    for i, cube in enumerate(cubes):
        if np.ndim(cube) != 3:
            raise ValueError(f"cube {i} is not 3-D")
        if shape is None:
            shape = cube.shape[1:]
        elif cube.shape[1:] != shape:
            raise ValueError(f"cube {i} has frames of {cube.shape[2]}x{cube.shape[1]} pixels, "
                             f"the first has {shape[1]}x{shape[0]}")
    stacked = np.concatenate(cubes, axis=0)
    index = np.concatenate([
        np.stack([np.full(c.shape[0], i), np.arange(c.shape[0])], axis=1)
        for i, c in enumerate(cubes)
    ]).astype(np.int64)
    return stacked, index
