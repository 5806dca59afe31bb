"""A features cache or tokenizer file cut short by a kill is set aside with one line naming it and made
again, never a traceback."""

import logging

import yaml

from mpsearch.config import FeatureConfig, StudyConfig
from mpsearch.data.pipeline import load_features
from mpsearch.study import Study


def test_a_torn_features_cache_is_set_aside_and_recomputed(synth_corpus, tmp_path, caplog):
    manifest = synth_corpus.manifests["dev"]
    features = FeatureConfig(n_mels=16)
    feats, texts = load_features(manifest, features, tmp_path, progress=False)
    (cache,) = tmp_path.glob("*.pt")
    cache.write_bytes(cache.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        again, texts_again = load_features(manifest, features, tmp_path, progress=False)
    assert texts_again == texts and all((a == b).all() for a, b in zip(feats, again))
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert str(cache) in line and "set aside" in line
    assert len(list(tmp_path.glob("*-torn.pt"))) == 1


def test_a_torn_tokenizer_file_is_written_again(synth_corpus, tmp_path, caplog):
    m = synth_corpus.manifests
    cfg = StudyConfig.from_dict(yaml.safe_load(f"""
name: torn
output_dir: {tmp_path / 'study'}
data: {{corpus: manifest, train: {m['train']}, dev: {m['dev']}, test: {m['test']}}}
model: {{name: rnnt}}
"""))
    alphabet = Study(cfg, progress=False).tokenizer.alphabet
    path = tmp_path / "study" / "tokenizer.json"
    path.write_text(path.read_text()[:10])
    with caplog.at_level(logging.WARNING):
        assert Study(cfg, progress=False).tokenizer.alphabet == alphabet
    assert any(str(path) in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
