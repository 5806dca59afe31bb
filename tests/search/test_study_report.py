import base64
import json
from html.parser import HTMLParser

import yaml

from mpsearch.cli.main import main
from mpsearch.config import StudyConfig
from mpsearch.search.pareto import load_front_table
from mpsearch.search.pick import pick_trial

SECTIONS = ["front", "policies", "latency", "sensitivity", "baseline", "settings"]


class ReportParser(HTMLParser):
    """Collects the section ids, embedded images and open/close tag balance of a page."""

    def __init__(self):
        super().__init__()
        self.sections, self.images, self.open_tags = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs["id"])
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag not in ("meta", "br"):
            self.open_tags.append(tag)

    def handle_endtag(self, tag):
        assert self.open_tags and self.open_tags[-1] == tag, f"</{tag}> closes <{self.open_tags[-1:]}>"
        self.open_tags.pop()


def parse(text: str) -> ReportParser:
    parser = ReportParser()
    parser.feed(text)
    parser.close()
    assert parser.open_tags == []
    return parser


def test_report_of_a_searched_study(make_study, capsys):
    path = make_study()
    assert main(["search", str(path), "--no-progress"]) == 0
    cfg = StudyConfig.from_yaml(path)
    folder = cfg.study_dir
    # A policy trained after the search (what `mpsearch train --policy` stores), so its section has a row.
    (folder / "trained" / "knee").mkdir(parents=True)
    (folder / "trained" / "knee" / "metrics.json").write_text(json.dumps(
        {"wer": 0.5, "latency_ms": 0.3, "finetune": {"steps": 7}, "eval_split": "dev"}))
    # Editing the YAML after the search: the report follows the stored settings and leaves them alone.
    stored = (folder / "study.yaml.json").read_text()
    edited = yaml.safe_load(path.read_text())
    edited["search"]["trials"] = 9
    path.write_text(yaml.safe_dump(edited))
    capsys.readouterr()

    assert main(["report", str(path)]) == 0
    report = folder / "report.html"
    assert capsys.readouterr().out.strip() == str(report)
    assert (folder / "study.yaml.json").read_text() == stored
    text = report.read_text()
    page = parse(text)
    assert page.sections == SECTIONS
    # Sensitivity traces, the front and the latency breakdown, each a real PNG.
    assert len(page.images) == 3
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "differs from the settings stored" in text
    assert "trials: 4" in text and "trials: 9" not in text
    table = load_front_table(cfg)
    knee = pick_trial(table, pick="knee")
    assert f"knee-policy.json; trial {knee.number})" in text
    assert f"hypervolume {table.hypervolume:.4g}" in text
    for site in json.loads((folder / "knee-policy.json").read_text())["sites"]:
        assert f"<td class=text>{site}</td>" in text
    assert "finetune.steps" in text and ">knee</th>" in text
    assert "nna-int8" in text and "share" in text

    # Without trials, sensitivity or knee policy, those sections say what writes them.
    for name in ("optuna.db", "knee-policy.json", "sensitivity.json"):
        (folder / name).unlink()
    out = folder / "bare.html"
    assert main(["report", str(path), "--out", str(out)]) == 0
    text = out.read_text()
    page = parse(text)
    assert page.sections == SECTIONS and page.images == []
    assert "run `mpsearch search` on the study first" in text
    assert "`mpsearch sensitivity`" in text
    assert "No knee-policy.json" in text


def test_report_without_baseline_names_the_command(make_study, capsys):
    path = make_study()
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert "no float baseline" in err and "run `mpsearch search`" in err
    assert not (StudyConfig.from_yaml(path).study_dir / "report.html").exists()
