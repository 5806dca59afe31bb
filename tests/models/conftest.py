import pytest
import torch


@pytest.fixture
def speech_batch():
    """Three utterances of 8 mel bins, padded with garbage so masking mistakes show."""
    gen = torch.Generator().manual_seed(0)
    feat_lens = torch.tensor([21, 13, 6])
    target_lens = torch.tensor([4, 2, 1])
    feats = torch.randn(3, 21, 8, generator=gen)
    targets = torch.randint(2, 6, (3, 4), generator=gen)
    targets[1, 2:] = -1
    targets[2, 1:] = -1
    return feats, feat_lens, targets, target_lens


@pytest.fixture
def loss_decreases():
    """Runs a few Adam steps on one batch; returns (last loss < first loss, all losses)."""
    return _loss_decreases


@pytest.fixture
def mean_of_single_utterances():
    """The mean of the model's losses on each utterance of a batch run alone, unpadded."""
    return _mean_of_single_utterances


def _loss_decreases(model, batch, steps=8, lr=1e-2):
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model(*batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses[-1] < losses[0], losses


def _mean_of_single_utterances(model, batch):
    feats, feat_lens, targets, target_lens = batch
    losses = [model(feats[b:b + 1, : feat_lens[b]], feat_lens[b:b + 1], targets[b:b + 1, : target_lens[b]],
                    target_lens[b:b + 1]) for b in range(feats.shape[0])]
    return torch.stack(losses).mean()
