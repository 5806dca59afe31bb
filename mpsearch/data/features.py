"""80-dim log-mel filterbanks in plain torch (torchaudio is not available), normalisation, SpecAugment."""

from __future__ import annotations

import functools
import math

import torch

SAMPLE_RATE = 16000
WIN_LENGTH = 400  # 25 ms
HOP_LENGTH = 160  # 10 ms
N_FFT = 512


def _hz_to_mel(hz: float) -> float:
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@functools.lru_cache(maxsize=8)
def mel_filterbank(n_mels: int, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE,
                   f_min: float = 20.0, f_max: float | None = None) -> torch.Tensor:
    """HTK-scale triangular filters, shape (n_fft // 2 + 1, n_mels)."""
    f_max = f_max or sample_rate / 2
    mels = torch.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2, dtype=torch.float64)
    hz = _mel_to_hz(mels)
    bins = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lower, center, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    rising = (bins[None, :] - lower) / (center - lower)
    falling = (upper - bins[None, :]) / (upper - center)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).T.contiguous().float()


@functools.lru_cache(maxsize=2)
def _window() -> torch.Tensor:
    return torch.hann_window(WIN_LENGTH, periodic=True)


def log_mel(audio: torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """(samples,) float audio at 16 kHz -> (frames, n_mels) log-mel energies."""
    if audio.dim() != 1:
        raise ValueError("log_mel expects mono audio of shape (samples,)")
    if audio.numel() < WIN_LENGTH:
        audio = torch.nn.functional.pad(audio, (0, WIN_LENGTH - audio.numel()))
    spec = torch.stft(audio, N_FFT, HOP_LENGTH, WIN_LENGTH, _window(), center=False, return_complex=True)
    power = spec.real.square() + spec.imag.square()  # (freq, frames)
    mel = power.T @ mel_filterbank(n_mels)
    return torch.log(mel + 1e-6)


def normalize_utterance(feats: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per mel channel over the utterance."""
    mean = feats.mean(dim=0, keepdim=True)
    std = feats.std(dim=0, keepdim=True, unbiased=False).clamp_min(1e-5)
    return (feats - mean) / std


def spec_augment(feats: torch.Tensor, generator: torch.Generator, freq_masks: int, freq_width: int,
                 time_masks: int, time_width: float) -> torch.Tensor:
    """Zero random mel bands and time spans (Park et al. 2019), on a (frames, n_mels) tensor."""
    feats = feats.clone()
    frames, n_mels = feats.shape
    for _ in range(freq_masks):
        width = int(torch.randint(0, freq_width + 1, (1,), generator=generator))
        start = int(torch.randint(0, max(1, n_mels - width), (1,), generator=generator))
        feats[:, start:start + width] = 0.0
    max_t = int(time_width * frames)
    for _ in range(time_masks):
        width = int(torch.randint(0, max_t + 1, (1,), generator=generator))
        start = int(torch.randint(0, max(1, frames - width), (1,), generator=generator))
        feats[start:start + width, :] = 0.0
    return feats
