import pytest
import torch
import torch.nn.functional as F

from mpsearch.errors import MpsearchError
from mpsearch.models.ctc_loss import ctc_loss


def random_case(seed, batch=4, frames=12, labels=5, classes=6, repeats=False):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(frames, batch, classes, generator=gen, dtype=torch.float64)
    input_lengths = torch.randint(frames // 2, frames + 1, (batch,), generator=gen)
    input_lengths[0] = frames
    target_lengths = torch.randint(0, labels + 1, (batch,), generator=gen)
    target_lengths[0] = labels
    targets = torch.randint(1, classes, (batch, labels), generator=gen)
    if repeats:  # runs of one label need a blank between them, and forbid the skip transition
        targets[:, 1::2] = targets[:, ::2][:, : targets[:, 1::2].shape[1]]
    valid = torch.arange(labels)[None, :] < target_lengths[:, None]
    targets = torch.where(valid, targets, -1)  # padding with garbage must not matter
    return logits, targets, input_lengths, target_lengths


def torch_reference(logits, targets, input_lengths, target_lengths, reduction):
    safe = targets.clamp(min=0)
    return F.ctc_loss(logits.log_softmax(-1), safe, input_lengths, target_lengths, blank=0,
                      reduction=reduction, zero_infinity=True)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("repeats", [False, True])
def test_values_and_gradients_equal_torch(seed, repeats):
    logits, targets, input_lengths, target_lengths = random_case(seed, repeats=repeats)
    for reduction in ("none", "sum", "mean"):
        ours_in = logits.clone().requires_grad_(True)
        ref_in = logits.clone().requires_grad_(True)
        ours = ctc_loss(ours_in.log_softmax(-1), targets, input_lengths, target_lengths, reduction=reduction,
                        zero_infinity=True)
        ref = torch_reference(ref_in, targets, input_lengths, target_lengths, reduction)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
        # torch's kernel returns a gradient that is right only through the log_softmax, so compare there
        ours.sum().backward()
        ref.sum().backward()
        torch.testing.assert_close(ours_in.grad, ref_in.grad, atol=1e-5, rtol=1e-5)


def test_float32_matches_torch():
    logits, targets, input_lengths, target_lengths = random_case(7, batch=3, frames=30, labels=8, classes=10)
    logits = logits.float()
    ours = ctc_loss(logits.log_softmax(-1), targets, input_lengths, target_lengths, reduction="none")
    ref = torch_reference(logits, targets, input_lengths, target_lengths, "none")
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_impossible_alignment_is_inf_or_zero():
    log_probs = torch.randn(3, 1, 4, dtype=torch.float64).log_softmax(-1).requires_grad_(True)
    targets = torch.tensor([[1, 1, 2]])  # needs 4 frames (a blank between the repeated 1s)
    lengths, target_lengths = torch.tensor([3]), torch.tensor([3])
    assert torch.isinf(ctc_loss(log_probs, targets, lengths, target_lengths, reduction="none")).all()
    loss = ctc_loss(log_probs, targets, lengths, target_lengths, reduction="sum", zero_infinity=True)
    loss.backward()
    assert loss.item() == 0.0 and log_probs.grad.abs().max() == 0.0
    ref = F.ctc_loss(log_probs.detach(), targets, lengths, target_lengths, reduction="none")
    assert torch.isinf(ref).all()


def test_gradgradcheck_passes():
    logits, targets, input_lengths, target_lengths = random_case(3, batch=2, frames=5, labels=2, classes=4,
                                                                 repeats=True)
    logits.requires_grad_(True)

    def loss(x):
        return ctc_loss(x.log_softmax(-1), targets, input_lengths, target_lengths, reduction="mean")

    assert torch.autograd.gradcheck(loss, (logits,))
    assert torch.autograd.gradgradcheck(loss, (logits,))


def test_bad_shape_is_an_mpsearch_error():
    with pytest.raises(MpsearchError, match=r"\(T, B, C\)"):
        ctc_loss(torch.zeros(3, 4), torch.zeros(1, 2, dtype=torch.long), torch.tensor([3]), torch.tensor([2]))
