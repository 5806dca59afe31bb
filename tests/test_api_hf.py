"""mpsearch.api.search_model on tiny third-party CTC models (Hugging Face's built from a config, nothing
downloaded, and a plain conv + GRU model), on the NNA's integers: a few fixed batches of random input with
fixed transcripts, scored by the CER of greedy CTC decodes."""

import pytest
import torch
from optuna.trial import TrialState

from mpsearch.api import search_model
from mpsearch.eval.wer import error_rates

transformers = pytest.importorskip("transformers")

TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
        "conv_dim": (16, 16), "conv_stride": (5, 2), "conv_kernel": (10, 3), "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 2, "vocab_size": 12, "hidden_dropout": 0.0, "attention_dropout": 0.0,
        "activation_dropout": 0.0, "feat_proj_dropout": 0.0, "layerdrop": 0.0, "mask_time_prob": 0.0}
LETTERS = " abcdefghij"  # token 0 is the CTC blank


def wav2vec2():
    return transformers.Wav2Vec2ForCTC(transformers.Wav2Vec2Config(**TINY))


def wav2vec2_conformer():
    return transformers.Wav2Vec2ConformerForCTC(transformers.Wav2Vec2ConformerConfig(**TINY,
                                                                                    conv_depthwise_kernel_size=3))


def text(tokens):
    return "".join(LETTERS[t - 1] for t in tokens)


def greedy_ctc(logits):
    """Best path, repeats merged, blanks dropped, as text."""
    decoded = []
    for path in logits.argmax(-1).tolist():
        merged = [t for i, t in enumerate(path) if t != 0 and (i == 0 or t != path[i - 1])]
        decoded.append(text(merged))
    return decoded


def problem(make):
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(2, 800, generator=gen), torch.randint(2, 12, (2, 5), generator=gen)) for _ in range(2)]
    torch.manual_seed(0)
    state = make().state_dict()

    def factory():
        model = make()
        model.load_state_dict(state)
        return model.eval()

    def train_step(model, step):
        audio, labels = batches[step % len(batches)]
        return model(audio, labels=labels).loss

    def evaluate(model):
        refs = [text(row) for _, labels in batches for row in labels.tolist()]
        hyps = [h for audio, _ in batches for h in greedy_ctc(model(audio).logits)]
        return {"cer": error_rates(refs, hyps)["cer"]}

    return factory, train_step, evaluate


def conv_gru_problem():
    """A conv + GRU CTC model on 16-dim features: a Conv1d front end, one GRU, a Linear over the letters."""
    from mpsearch.testing.user_models import ConvRNNCTC

    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(2, 40, 16, generator=gen), torch.randint(2, 12, (2, 5), generator=gen)) for _ in range(2)]
    lens = torch.tensor([40, 40])
    torch.manual_seed(0)
    state = ConvRNNCTC(16, 12, rnn="gru").state_dict()

    def factory():
        model = ConvRNNCTC(16, 12, rnn="gru")
        model.load_state_dict(state)
        return model.eval()

    def train_step(model, step):
        feats, labels = batches[step % len(batches)]
        log_probs, out_lens = model(feats, lens)
        return torch.nn.functional.ctc_loss(log_probs.transpose(0, 1), labels, out_lens, torch.tensor([5, 5]))

    def evaluate(model):
        refs = [text(row) for _, labels in batches for row in labels.tolist()]
        hyps = [h for feats, _ in batches for h in greedy_ctc(model(feats, lens)[0])]
        return {"cer": error_rates(refs, hyps)["cer"]}

    return factory, train_step, evaluate


@pytest.mark.parametrize("make", [wav2vec2, wav2vec2_conformer, None], ids=["wav2vec2", "wav2vec2-conformer",
                                                                           "conv-gru"])
def test_search_model_runs_trials_of_a_third_party_model_on_the_nna(make, tmp_path):
    factory, train_step, evaluate = problem(make) if make else conv_gru_problem()
    result = search_model(factory, train_step, evaluate, {"groups": {"all": {"sites": "*", "weight_bits": [4, 8]}}},
                          trials=2, finetune_steps=2, calibration_steps=2, objectives=("cer", "latency_ms"),
                          profile="nna-int8", emulation="nna", output_dir=tmp_path, progress=False)
    # a point proposed again by a concurrent worker is answered from its trial (copied_from), not counted
    complete = [t for t in result.study.get_trials(states=(TrialState.COMPLETE,)) if "copied_from" not in t.user_attrs]
    assert len(complete) == 2
    assert {t.user_attrs["origin"] for t in complete} == {"uniform-8", "uniform-4"}
    for trial in complete:
        cer, latency = trial.values
        assert cer >= 0 and latency > 0
    assert len(result.front) >= 1
