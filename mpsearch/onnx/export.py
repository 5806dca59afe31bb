"""Write the ONNX graphs of an integer export next to it, `<stem>.<part>.onnx` for `<stem>.npz`: the parts
depend on the architecture its header names (`ONNX_EXPORTS`):

  rnnt        encoder, predictor, joiner      (mpsearch.onnx.transducer)
  conformer   ctc: one graph, CTC head only   (mpsearch.onnx.conformer)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpsearch.artifacts import atomic_path
from mpsearch.onnx import conformer, transducer
from mpsearch.onnx.deps import OnnxError, require_onnx
from mpsearch.quant.nna.executor import IntegerModel
from mpsearch.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OnnxExport:
    """The graphs of one architecture: their part names, and the builder of {part: ONNX model}."""

    parts: tuple[str, ...]
    build: Callable[[IntegerModel], dict[str, Any]]


ONNX_EXPORTS: Registry[OnnxExport] = Registry("ONNX export")
ONNX_EXPORTS.register("rnnt")(OnnxExport(transducer.GRAPHS, transducer.transducer_graphs))
ONNX_EXPORTS.register("conformer")(OnnxExport(conformer.PARTS, conformer.conformer_graphs))


def architecture(npz: str | Path) -> str:
    """The architecture named in the header of the integer export `npz`."""
    return str(IntegerModel(npz).header.get("architecture"))


def onnx_export(name: str) -> OnnxExport:
    """The registered graphs of architecture `name`, or an OnnxError listing those that have graphs."""
    if name not in ONNX_EXPORTS:
        raise OnnxError(f"No ONNX export for architecture {name!r}; graphs exist for "
                        f"{', '.join(ONNX_EXPORTS.names())}. Run it with mpsearch.quant.nna.executor instead.")
    return ONNX_EXPORTS.get(name)


def onnx_paths(npz: str | Path) -> dict[str, Path]:
    """Where `export_onnx` writes each graph of the integer export `npz`."""
    npz = Path(npz)
    return {part: npz.with_name(f"{npz.stem}.{part}.onnx") for part in onnx_export(architecture(npz)).parts}


def export_onnx(npz: str | Path) -> dict[str, Path]:
    """Build the ONNX graphs of the integer export `npz` (written by `export_int`) and write them beside
    it; returns {graph: path}. The graphs hold the export's integers as they are, so onnxruntime computes
    what `mpsearch.quant.nna.executor` computes."""
    onnx = require_onnx()
    model = IntegerModel(npz)
    graphs = onnx_export(model.header.get("architecture")).build(model)
    paths = onnx_paths(npz)
    for part, graph in graphs.items():
        with atomic_path(paths[part]) as tmp:
            onnx.save_model(graph, str(tmp))
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
