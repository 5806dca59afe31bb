"""Write the ONNX graphs of an integer export next to it: `<stem>.encoder.onnx`, `<stem>.predictor.onnx`,
`<stem>.joiner.onnx` for `<stem>.npz`."""

from __future__ import annotations

import logging
from pathlib import Path

from mpsearch.artifacts import atomic_path
from mpsearch.onnx.deps import OnnxError, require_onnx
from mpsearch.onnx.transducer import GRAPHS, transducer_graphs
from mpsearch.quant.nna.executor import IntegerModel

log = logging.getLogger(__name__)


def onnx_paths(npz: str | Path) -> dict[str, Path]:
    """Where `export_onnx` writes each graph of the integer export `npz`."""
    npz = Path(npz)
    return {part: npz.with_name(f"{npz.stem}.{part}.onnx") for part in GRAPHS}


def export_onnx(npz: str | Path) -> dict[str, Path]:
    """Build the ONNX graphs of the integer export `npz` (written by `export_int`) and write them beside
    it; returns {graph: path}. The graphs hold the export's integers as they are, so onnxruntime computes
    what `mpsearch.quant.nna.executor` computes."""
    onnx = require_onnx()
    graphs = transducer_graphs(IntegerModel(npz))
    paths = onnx_paths(npz)
    for part, model in graphs.items():
        with atomic_path(paths[part]) as tmp:
            onnx.save_model(model, str(tmp))
    log.info("ONNX graphs written: %s", ", ".join(str(p) for p in paths.values()))
    return paths


def export_onnx_if_supported(npz: str | Path) -> dict[str, Path] | None:
    """`export_onnx` where the onnx package is installed and the architecture has ONNX graphs; otherwise
    one log line saying why not, and None (training's artefacts stand without them)."""
    try:
        return export_onnx(npz)
    except OnnxError as exc:
        log.warning("No ONNX export: %s", exc)
        return None
