"""coron: coronagraphic PSF subtraction (reference-star differential imaging with KLIP).

The package is layered: :mod:`coron_cli.core` holds pure numerics on arrays,
:mod:`coron_cli.products` and :mod:`coron_cli.asn` read and write files,
:mod:`coron_cli.steps` builds products from both, and :mod:`coron_cli.cli`
holds the thin click commands.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
