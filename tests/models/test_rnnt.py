import pytest
import torch
from torch import nn

from mpsearch.models.rnnt import RNNT, RNNTConfig, transducer_greedy_search


def tiny_rnnt(**overrides) -> RNNT:
    torch.manual_seed(0)
    params = {"n_mels": 8, "vocab_size": 6, "frontend_dim": 16, "enc_hidden": 16, "enc_layers": 2,
              "pred_embed": 8, "pred_hidden": 16, "joint_dim": 16, "dropout": 0.0}
    return RNNT(RNNTConfig(**{**params, **overrides}))


@pytest.mark.parametrize("subsampling", ["conv", "stack"])
def test_a_few_steps_lower_the_loss(speech_batch, subsampling, loss_decreases):
    decreased, losses = loss_decreases(tiny_rnnt(subsampling=subsampling), speech_batch)
    assert decreased, losses


@pytest.mark.parametrize("subsampling", ["conv", "stack"])
def test_padded_batch_loss_equals_mean_of_utterances_alone(speech_batch, subsampling,
                                                           mean_of_single_utterances):
    model = tiny_rnnt(subsampling=subsampling).eval()
    with torch.no_grad():
        batch_loss = model(*speech_batch)
        alone = mean_of_single_utterances(model, speech_batch)
    assert batch_loss.item() == pytest.approx(alone.item(), abs=1e-5)


def test_output_lengths_match_the_encoder_frames(speech_batch):
    feats, feat_lens, _, _ = speech_batch
    for subsampling in ["conv", "stack"]:
        model = tiny_rnnt(subsampling=subsampling)
        enc, lengths = model.encode(feats, feat_lens)
        assert lengths.tolist() == model.output_lengths(feat_lens).tolist() == [6, 4, 2]
        assert enc.shape == (3, 6, 16)


def test_site_steps_name_every_top_level_submodule():
    model = tiny_rnnt()
    assert set(model.site_steps) == {name for name, _ in model.named_children()}
    assert model.site_steps["predictor"] == "token" and model.site_steps["joiner"] == "joint"


class CountingPredictor(nn.Module):
    """Its output is the number of labels fed so far, so the joiner double can read it."""

    def step(self, tokens, state):
        count = torch.zeros(1, tokens.shape[0], 1) if state is None else state[0] + 1
        return count[0], (count,)


class ScriptedJoiner(nn.Module):
    """Emits script[b][t] one label at a time at frame t, then blank; enc holds the frame index and the
    utterance b (the search may score any subset of the batch, in any order)."""

    def __init__(self, script, vocab=6):
        super().__init__()
        self.script, self.vocab = script, vocab

    def forward(self, enc, pred):
        logits = torch.zeros(enc.shape[0], self.vocab)
        for row, (frame, b, emitted) in enumerate(zip(enc[:, 0].long().tolist(), enc[:, 1].long().tolist(),
                                                      pred[:, 0].long().tolist())):
            before = sum(len(labels) for labels in self.script[b][:frame])
            labels = self.script[b][frame]
            index = emitted - before
            logits[row, labels[index] if index < len(labels) else 0] = 10.0
        return logits


def frame_indices(batch, frames):
    """(batch, frames, 2): each frame's index and its utterance's."""
    frame = torch.arange(frames, dtype=torch.float32)[None, :].expand(batch, frames)
    utterance = torch.arange(batch, dtype=torch.float32)[:, None].expand(batch, frames)
    return torch.stack([frame, utterance], dim=-1)


def test_greedy_search_follows_the_joiner_frame_by_frame():
    script = [[[2], [], [3, 3, 4], [5]], [[], [4, 2], [], [3]]]
    hyps = transducer_greedy_search(frame_indices(2, 4), torch.tensor([4, 3]), CountingPredictor(),
                                    ScriptedJoiner(script), max_symbols_per_frame=5)
    assert hyps == [[2, 3, 3, 4, 5], [4, 2]]  # the second utterance ends before its last frame


def test_greedy_search_keeps_each_utterance_apart_whatever_the_order_of_lengths():
    # Utterances stop emitting at different frames, end at different frames, and come shortest first.
    script = [[[3], [2]], [[], [4], [2, 2], [5]], [[4, 4], [], [3]], [[5, 5, 5], [], [], [2, 4]]]
    hyps = transducer_greedy_search(frame_indices(4, 4), torch.tensor([2, 4, 3, 4]), CountingPredictor(),
                                    ScriptedJoiner(script), max_symbols_per_frame=5)
    assert hyps == [[3, 2], [4, 2, 2, 5], [4, 4, 3], [5, 5, 5, 2, 4]]


def test_greedy_search_caps_labels_per_frame():
    class AlwaysThree(nn.Module):
        def forward(self, enc, pred):
            return torch.eye(6)[3].expand(enc.shape[0], 6)

    hyps = transducer_greedy_search(frame_indices(2, 3), torch.tensor([3, 1]), CountingPredictor(),
                                    AlwaysThree(), max_symbols_per_frame=2)
    assert hyps == [[3] * 6, [3] * 2]


def test_greedy_decode_of_a_model_with_a_forced_joiner(speech_batch):
    model = tiny_rnnt().eval()
    feats, feat_lens, _, _ = speech_batch
    with torch.no_grad():
        model.joiner.out.weight.zero_()
        model.joiner.out.bias.copy_(torch.tensor([0.0, 0, 0, 0, 9, 0]))
    assert model.greedy_decode(feats, feat_lens, max_symbols_per_frame=2) == [[4] * 12, [4] * 8, [4] * 4]
    with torch.no_grad():
        model.joiner.out.bias.copy_(torch.tensor([9.0, 0, 0, 0, 0, 0]))
    assert model.greedy_decode(feats, feat_lens) == [[], [], []]


def test_overfitting_one_batch_then_decoding_recovers_the_targets():
    torch.manual_seed(0)
    model = tiny_rnnt(enc_hidden=32, joint_dim=32)
    feats, feat_lens = torch.randn(2, 24, 8), torch.tensor([24, 16])
    targets, target_lens = torch.tensor([[2, 3, 3, 5], [4, 2, -1, -1]]), torch.tensor([4, 2])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        optimizer.zero_grad()
        model(feats, feat_lens, targets, target_lens).backward()
        optimizer.step()
    assert model.eval().greedy_decode(feats, feat_lens) == [[2, 3, 3, 5], [4, 2]]
