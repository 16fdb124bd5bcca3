"""The sparsity chart of a model card: per-layer sparsity and kept widths, drawn with matplotlib's Agg canvas.

```python
>>> from hf_sparsify.hub.chart import render_sparsity_chart
>>> pruned = hf_sparsify.prune(model, hf_sparsify.MagnitudeConfig(sparsity=0.5))
>>> render_sparsity_chart(hf_sparsify.sparsity_report(pruned).to_dict(), tmp_dir / "chart.png")
True
```
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

from ..structured.bottleneck import card_bottlenecks, draw_bottleneck_panel
from ..utils import get_logger

__all__ = ["CHART_NAME", "render_sparsity_chart"]

logger = get_logger(__name__)

CHART_NAME = "sparsity_chart.png"


def _short(name: str) -> str:
    name = re.sub(r"^(vit|deit|dinov2|convnext|convnextv2|model)\.", "", name)
    name = name.replace("encoder.", "").replace("layers.", "L").replace("layer.", "L").replace("stages.", "S").replace("attention.", "").replace("mlp.", "")
    return name


def render_sparsity_chart(summary: Mapping[str, Any], path: str | os.PathLike) -> bool:
    """Draw per-layer sparsity (and kept width per structure, when structures were removed) as a PNG; a model pruned
    by a structured method with a global allocation gets a third panel: the kept fraction per group of that pruning
    step, with its bottleneck candidates (see :func:`hf_sparsify.bottleneck_report`).

    Uses matplotlib's Agg canvas directly (the pyplot backend of the caller is left alone). Returns ``False``
    (and logs why) when matplotlib is not installed (``pip install hf_sparsify[plot]``).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logger.info("hf_sparsify: matplotlib is not installed, the card has no chart (pip install 'hf_sparsify[plot]').")
        return False
    layers = list(summary.get("layers") or [])
    structures = [s for s in summary.get("structures") or [] if s.get("dense_units") not in (None, s.get("units"))]
    bottlenecks = card_bottlenecks(summary)
    panels = [p for p in (layers, structures, bottlenecks.rows if bottlenecks else None) if p]
    if not panels:
        return False
    width = min(24.0, max(6.0, 0.18 * max(len(p) for p in panels) + 2))
    fig = Figure(figsize=(width, 3.2 * len(panels)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    k = 0
    if layers:
        ax = axes[k]
        k += 1
        values = [100 * float(l.get("sparsity", 0.0)) for l in layers]
        ax.bar(range(len(values)), values, color="#d9534f")
        ax.set_ylim(0, 100)
        ax.set_ylabel("sparsity (%)")
        glob = (summary.get("global") or {}).get("sparsity")
        ax.set_title("Per-layer weight sparsity" + (f" (global {100 * glob:.1f}%)" if glob is not None else ""))
        ax.set_xticks(range(len(values)), [_short(l["name"]) for l in layers], rotation=90, fontsize=6)
    if structures:
        ax = axes[k]
        values = [100 * s["units"] / s["dense_units"] for s in structures]
        ax.bar(range(len(values)), values, color="#337ab7")
        ax.set_ylim(0, 100)
        ax.set_ylabel("kept width (%)")
        ax.set_title("Kept units per structure (MLP neurons, heads, channels)")
        ax.set_xticks(range(len(values)), [_short(s["name"]) for s in structures], rotation=90, fontsize=6)
        k += 1
    if bottlenecks:
        draw_bottleneck_panel(axes[k], bottlenecks)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return True
