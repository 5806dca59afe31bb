"""How close the supernet's candidates come to the final front, and what warm-starting with them buys.

Reads two finished studies of the same model, data and search space: one searched without supernet
warm start (--without) and one with it (--with; `search.warm_start.supernet: true`). The final front
is the non-dominated set of both studies' complete trials together. For each supernet trial it prints
the distance to that front in the normalised objective space (each objective divided by the uniform
8-bit trial's value; 0 = on the front), and the hypervolume of each study against one shared
reference point (the --without study's). Writes supernet_vs_front.csv.

    python analysis/supernet_vs_front.py --without studies/quickstart.yaml --with studies/quickstart_sn.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _study_io import output_folder, write_csv

from mpsearch.config import StudyConfig
from mpsearch.search.pareto import hypervolume, load_front_table, non_dominated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--without", required=True, metavar="STUDY.yaml")
    parser.add_argument("--with", dest="with_", required=True, metavar="STUDY.yaml")
    parser.add_argument("--out", metavar="DIR")
    args = parser.parse_args(argv)
    import pandas as pd

    plain, warm = (load_front_table(StudyConfig.from_yaml(p)) for p in (args.without, args.with_))
    objectives = list(plain.objectives)
    reference = np.array(plain.reference.values)
    scale = plain.frame.loc[plain.frame["origin"] == "uniform-8", objectives].to_numpy(dtype=float)[0]
    both = pd.concat([plain.frame.assign(study="without"), warm.frame.assign(study="with")], ignore_index=True)
    points = both[objectives].to_numpy(dtype=float) / scale
    front = points[non_dominated(points)]
    rows = []
    for _, row in both[both["origin"].astype(str).str.startswith("supernet-")].iterrows():
        point = row[objectives].to_numpy(dtype=float) / scale
        gaps = np.maximum(point[None, :] - front, 0.0)      # how far it trails each front point
        rows.append({"trial": row["trial"], "origin": row["origin"], **{o: row[o] for o in objectives},
                     "distance_to_front": float(np.sqrt((gaps ** 2).sum(1)).min())})
    table = pd.DataFrame(rows)
    volumes = {name: hypervolume(t.frame[objectives].to_numpy(dtype=float), reference)
               for name, t in (("without", plain), ("with", warm))}
    print(table.to_string(index=False))
    print(f"hypervolume without supernet warm start {volumes['without']:.4g}, with {volumes['with']:.4g} "
          f"(reference {dict(zip(objectives, (round(float(v), 4) for v in reference)))}; trials: {len(plain.frame)} vs {len(warm.frame)})")
    folder = output_folder(StudyConfig.from_yaml(args.with_), args.out)
    table.assign(hv_without=volumes["without"], hv_with=volumes["with"]).pipe(write_csv, folder / "supernet_vs_front.csv")
    print(f"wrote {folder / 'supernet_vs_front.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
