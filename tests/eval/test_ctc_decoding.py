import torch

from mpsearch.eval.decoding import ctc_greedy


def peaked(paths, vocab=5):
    return torch.nn.functional.one_hot(torch.tensor(paths), vocab).float().log_softmax(-1)


def test_collapses_repeats_and_drops_blanks():
    log_probs = peaked([[2, 2, 0, 2, 3, 3, 0, 0], [0, 4, 4, 4, 1, 0, 1, 1]])
    assert ctc_greedy(log_probs, torch.tensor([8, 8])) == [[2, 2, 3], [4, 1, 1]]


def test_frames_past_the_length_are_ignored():
    log_probs = peaked([[2, 3, 4, 4], [1, 0, 2, 3]])
    assert ctc_greedy(log_probs, torch.tensor([2, 0])) == [[2, 3], []]


def test_other_blank_index():
    assert ctc_greedy(peaked([[4, 1, 4, 4, 2]]), torch.tensor([5]), blank=4) == [[1, 2]]
