"""The front's artefacts in the study folder: front.csv (every distinct complete trial), front.png and
front.json (hypervolume, reference point, counts, front trial numbers), written atomically."""

from __future__ import annotations

from pathlib import Path

from mpsearch.artifacts import atomic_path, write_json
from mpsearch.config import StudyConfig
from mpsearch.search.pareto import FrontTable, load_front_table

FRONT_CSV = "front.csv"
FRONT_PNG = "front.png"
FRONT_JSON = "front.json"
KNEE_POLICY = "knee-policy.json"


def write_front(cfg: StudyConfig, plot: bool = True) -> tuple[FrontTable, list[Path]]:
    table = load_front_table(cfg)
    folder = cfg.study_dir
    with atomic_path(folder / FRONT_CSV) as tmp:
        table.frame.to_csv(tmp, index=False)
    written = [folder / FRONT_CSV]
    if plot:
        from mpsearch.search.plot import plot_front

        plot_front(table, folder / FRONT_PNG)
        written.append(folder / FRONT_PNG)
    write_json(folder / FRONT_JSON, table.summary())
    written.append(folder / FRONT_JSON)
    return table, written
