import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpsearch.errors import MpsearchError
from mpsearch.models.rnnt_loss import rnnt_loss


def brute_force_nll(log_probs: torch.Tensor, labels: list[int], blank: int = 0) -> torch.Tensor:
    """-log of the summed probability of every alignment, enumerated one by one."""
    frames, n_labels = log_probs.shape[0], len(labels)
    scores = []
    # The last step of every alignment is a blank; choose where the labels go among the others.
    for label_steps in itertools.combinations(range(frames + n_labels - 1), n_labels):
        t = u = 0
        score = log_probs.new_zeros(())
        for step in range(frames + n_labels):
            if step in label_steps:
                score = score + log_probs[t, u, labels[u]]
                u += 1
            else:
                score = score + log_probs[t, u, blank]
                t += 1
        scores.append(score)
    return -torch.logsumexp(torch.stack(scores), dim=0)


def random_batch(seed, batch, frames, labels, vocab, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, frames, labels + 1, vocab, generator=gen, dtype=dtype)
    targets = torch.randint(1, vocab, (batch, labels), generator=gen)
    return logits, targets


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), frames=st.integers(1, 4), labels=st.integers(0, 3),
       vocab=st.integers(2, 5), blank=st.integers(0, 1), data=st.data())
def test_matches_brute_force_enumeration(seed, frames, labels, vocab, blank, data):
    logits, _ = random_batch(seed, 2, frames, labels, vocab)
    targets = torch.tensor([[data.draw(st.sampled_from([v for v in range(vocab) if v != blank]))
                             for _ in range(labels)] for _ in range(2)], dtype=torch.long).view(2, labels)
    logit_lengths = torch.tensor([frames, data.draw(st.integers(1, frames))])
    target_lengths = torch.tensor([labels, data.draw(st.integers(0, labels))])
    losses = rnnt_loss(logits, targets, logit_lengths, target_lengths, blank=blank, reduction="none")
    for b in range(2):
        t, u = int(logit_lengths[b]), int(target_lengths[b])
        expected = brute_force_nll(logits[b, :t, : u + 1].log_softmax(-1), targets[b, :u].tolist(), blank)
        assert losses[b].item() == pytest.approx(expected.item(), abs=1e-5)


def test_log_prob_inputs_give_the_same_loss():
    logits, targets = random_batch(0, 2, 4, 3, 5)
    lengths, target_lengths = torch.tensor([4, 3]), torch.tensor([3, 2])
    fused = rnnt_loss(logits, targets, lengths, target_lengths, reduction="none")
    unfused = rnnt_loss(logits.log_softmax(-1), targets, lengths, target_lengths, reduction="none",
                        fused_log_softmax=False)
    torch.testing.assert_close(fused, unfused)


@pytest.mark.parametrize("fused", [True, False])
def test_gradcheck_in_float64(fused):
    logits, targets = random_batch(1, 2, 3, 2, 4)
    logits = (logits if fused else logits.log_softmax(-1)).requires_grad_()
    lengths, target_lengths = torch.tensor([3, 2]), torch.tensor([2, 1])
    assert torch.autograd.gradcheck(
        lambda x: rnnt_loss(x, targets, lengths, target_lengths, reduction="sum", fused_log_softmax=fused),
        (logits,))


def test_gradgradcheck_for_hessian_vector_products():
    logits, targets = random_batch(5, 2, 3, 2, 4)
    lengths, target_lengths = torch.tensor([3, 2]), torch.tensor([2, 1])
    assert torch.autograd.gradgradcheck(
        lambda x: rnnt_loss(x, targets, lengths, target_lengths, reduction="sum"), (logits.requires_grad_(),))


def test_hessian_vector_product_stays_finite_for_peaked_float32_logits():
    logits, targets = random_batch(6, 2, 4, 3, 5, dtype=torch.float32)
    logits = (logits * 50).requires_grad_()  # log-prob gaps far beyond exp's float32 range
    loss = rnnt_loss(logits, targets, torch.tensor([4, 3]), torch.tensor([3, 2]))
    (grad,) = torch.autograd.grad(loss, logits, create_graph=True)
    (hvp,) = torch.autograd.grad((grad * torch.randn_like(grad)).sum(), logits)
    assert torch.isfinite(hvp).all()


def test_padded_batch_equals_utterances_run_alone():
    shapes = [(5, 3), (2, 1), (4, 0)]
    gen = torch.Generator().manual_seed(2)
    singles, total = [], 0.0
    logits = torch.randn(3, 5, 4, 6, generator=gen)
    targets = torch.full((3, 3), -1)  # padding that is not a valid label
    for b, (t, u) in enumerate(shapes):
        targets[b, :u] = torch.randint(1, 6, (u,), generator=gen)
        single = rnnt_loss(logits[b:b + 1, :t, : u + 1], targets[b:b + 1, :u], torch.tensor([t]),
                           torch.tensor([u]), reduction="sum")
        singles.append(single)
        total += single.item()
    lengths, target_lengths = torch.tensor([t for t, _ in shapes]), torch.tensor([u for _, u in shapes])
    batch = rnnt_loss(logits, targets, lengths, target_lengths, reduction="none")
    torch.testing.assert_close(batch, torch.stack(singles), atol=1e-5, rtol=0)
    batch_sum = rnnt_loss(logits, targets, lengths, target_lengths, reduction="sum")
    assert batch_sum.item() == pytest.approx(total, abs=1e-5)


def test_reductions():
    logits, targets = random_batch(3, 3, 4, 2, 5, dtype=torch.float32)
    lengths, target_lengths = torch.tensor([4, 3, 2]), torch.tensor([2, 1, 0])
    per_utt = rnnt_loss(logits, targets, lengths, target_lengths, reduction="none")
    assert per_utt.shape == (3,)
    torch.testing.assert_close(rnnt_loss(logits, targets, lengths, target_lengths), per_utt.mean())
    # token_mean counts an empty target as one token so it never divides by zero.
    torch.testing.assert_close(rnnt_loss(logits, targets, lengths, target_lengths, reduction="token_mean"),
                               per_utt.sum() / 4)


def test_half_precision_logits_are_computed_in_float32():
    logits, targets = random_batch(4, 1, 3, 2, 4, dtype=torch.float32)
    lengths, target_lengths = torch.tensor([3]), torch.tensor([2])
    loss = rnnt_loss(logits.bfloat16(), targets, lengths, target_lengths)
    assert loss.dtype == torch.float32


@pytest.mark.parametrize("change, message", [
    ({"targets": torch.zeros(1, 3, dtype=torch.long)}, "targets must be"),
    ({"logit_lengths": torch.tensor([5])}, "logit_lengths"),
    ({"logit_lengths": torch.tensor([0])}, "logit_lengths"),
    ({"target_lengths": torch.tensor([3])}, "target_lengths"),
    ({"reduction": "avg"}, "reduction"),
    ({"blank": 7}, "blank"),
])
def test_bad_inputs_raise_one_line_errors(change, message):
    args = {"logits": torch.randn(1, 4, 3, 5), "targets": torch.ones(1, 2, dtype=torch.long),
            "logit_lengths": torch.tensor([4]), "target_lengths": torch.tensor([2])}
    args.update(change)
    with pytest.raises(MpsearchError, match=message) as info:
        rnnt_loss(**args)
    assert "\n" not in str(info.value)


def test_blank_or_out_of_range_labels_are_rejected():
    logits = torch.randn(1, 4, 3, 5)
    for bad in (0, 5):
        with pytest.raises(MpsearchError, match="targets must be labels"):
            rnnt_loss(logits, torch.tensor([[2, bad]]), torch.tensor([4]), torch.tensor([2]))
