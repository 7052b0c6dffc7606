"""PNG figures of the high-level products (optional: needs matplotlib, ``coron[plot]``).

matplotlib is imported only inside these functions, and only its object
interface is used (no pyplot, no global backend switch), so importing this
module costs nothing and plotting never opens a window.
"""

import numpy as np

from .errors import ConfigError
from .products import atomic_output

__all__ = ["require_matplotlib", "plot_contrast", "plot_snr"]

_HINT = "needs matplotlib, the optional 'plot' extra: pip install 'coron[plot]'"


def require_matplotlib():
    """Fail with a one-line ConfigError (field ``plot``, exit 2) when matplotlib is not
    installed."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError:
        raise ConfigError("plot", _HINT) from None


def _figure(width=6.4, height=4.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def plot_contrast(table, path, *, title=None):
    """Contrast curve: 5-sigma contrast (raw and calibrated) against separation.

    Parameters
    ----------
    table : astropy.table.Table
        A CONTRAST table (:func:`coron_cli.steps.hlsp_step`). Without a
        contrast column (star flux unknown) the 1-sigma noise is drawn.
    path : str
        PNG file, written atomically.
    title : str, optional

    Notes
    -----
    Logarithmic vertical axis; separations in pixels below and, when the
    table has radius_arcsec, in arcsec on a secondary axis above.
    """
    require_matplotlib()
    fig = _figure()
    ax = fig.add_subplot()
    r = np.asarray(table["radius"], dtype=float)
    curves = []
    if "contrast_5sigma" in table.colnames:
        curves.append(("contrast_5sigma", "5$\\sigma$ raw", "C0", "--"))
        if "contrast_5sigma_calibrated" in table.colnames:
            curves.append(("contrast_5sigma_calibrated", "5$\\sigma$ throughput-calibrated",
                           "C1", "-"))
        ylabel = "5$\\sigma$ contrast (Student-t corrected)"
    else:
        curves.append(("sigma", "1$\\sigma$ noise per pixel", "C0", "-"))
        ylabel = "noise (image units)"
    shown = []
    for col, label, color, ls in curves:
        y = np.asarray(table[col], dtype=float)
        ok = np.isfinite(y) & (y > 0)
        if ok.any():
            ax.plot(r[ok], y[ok], ls, color=color, label=label)
            shown.append(y[ok])
    ax.set_yscale("log")
    if shown:  # the star's core, where few resolution elements fit, is off the top
        y = np.concatenate(shown)
        ax.set_ylim(0.5 * y.min(), min(y.max(), 100 * np.median(y)) * 2)
    ax.set_xlabel("separation (pixels)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    if "radius_arcsec" in table.colnames:
        a = np.asarray(table["radius_arcsec"], dtype=float)
        ok = np.isfinite(a) & (r > 0)
        if ok.any():
            scale = float(np.median(a[ok] / r[ok]))
            sec = ax.secondary_xaxis("top", functions=(lambda x: x * scale,
                                                        lambda x: x / scale))
            sec.set_xlabel("separation (arcsec)")
    ax.legend(loc="upper right", fontsize="small")
    if title:
        ax.set_title(title, fontsize="medium")
    _save(fig, path)


def plot_snr(snr, path, *, center=None, detections=None, title=None):
    """The SNR map with the detection candidates circled and numbered.

    Parameters
    ----------
    snr : ndarray of shape (ny, nx)
        Signal-to-noise map (NaN where undefined).
    path : str
        PNG file, written atomically.
    center : (x, y), optional
        Star position, marked with a cross.
    detections : astropy.table.Table, optional
        A DETECTIONS table (columns x, y, snr).
    title : str, optional
    """
    require_matplotlib()
    img = np.asarray(snr, dtype=float)
    fig = _figure(6.0, 5.2)
    ax = fig.add_subplot()
    finite = img[np.isfinite(img)]
    lim = max(5.0, float(np.percentile(np.abs(finite), 99.5))) if finite.size else 5.0
    im = ax.imshow(img, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim,
                   interpolation="nearest")
    fig.colorbar(im, ax=ax, label="SNR", shrink=0.9)
    if center is not None:
        ax.plot([center[0]], [center[1]], "+", color="k", ms=10)
    if detections is not None and len(detections):
        from matplotlib.patches import Circle

        for i, row in enumerate(detections, 1):
            ax.add_patch(Circle((row["x"], row["y"]), radius=max(3.0, img.shape[0] / 40),
                                fill=False, color="k", lw=1.2))
            ax.annotate(f"{i}: {row['snr']:.1f}", (row["x"], row["y"]), xytext=(6, 6),
                        textcoords="offset points", fontsize="small")
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
    if title:
        ax.set_title(title, fontsize="medium")
    _save(fig, path)
