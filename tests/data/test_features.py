import math

import torch

from mpsearch.data.features import log_mel, mel_filterbank, normalize_utterance, spec_augment


def test_log_mel_shape_and_frame_rate():
    audio = torch.randn(16000)
    feats = log_mel(audio, 80)
    assert feats.shape == (1 + (16000 - 512) // 160, 80)  # frames span n_fft samples
    assert torch.isfinite(feats).all()


def test_tone_lands_in_the_right_mel_band():
    t = torch.arange(16000) / 16000
    feats = log_mel(torch.sin(2 * math.pi * 1000 * t), 80)
    peak_band = int(feats.mean(0).argmax())
    fb = mel_filterbank(80)
    freq_of_bin = torch.linspace(0, 8000, fb.shape[0])
    center = float(freq_of_bin[fb[:, peak_band].argmax()])
    assert abs(center - 1000) < 120


def test_filterbank_covers_the_spectrum_without_gaps():
    fb = mel_filterbank(80)
    assert fb.shape == (257, 80)
    covered = fb.sum(1)
    assert (covered[3:-3] > 0).all()


def test_utterance_normalisation():
    feats = normalize_utterance(torch.randn(200, 80) * 3 + 5)
    torch.testing.assert_close(feats.mean(0), torch.zeros(80), atol=1e-5, rtol=0)
    torch.testing.assert_close(feats.std(0, unbiased=False), torch.ones(80), atol=1e-4, rtol=0)


def test_spec_augment_masks_are_seeded_and_bounded():
    feats = torch.ones(100, 80)
    a = spec_augment(feats, torch.Generator().manual_seed(3), 2, 10, 2, 0.1)
    b = spec_augment(feats, torch.Generator().manual_seed(3), 2, 10, 2, 0.1)
    assert torch.equal(a, b)
    zeros = (a == 0)
    assert zeros.any()
    assert zeros.all(0).sum() <= 20  # at most two bands of width 10
    assert zeros.all(1).sum() <= 20  # at most two spans of 10% of 100 frames
