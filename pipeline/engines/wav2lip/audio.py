"""Wav2Lip's audio front end, exactly as the public checkpoints were trained on.

The generator hears 0.2 s of audio per video frame as an 80x16 log-mel window. The numbers below are
Wav2Lip's hparams.py: 16 kHz audio, pre-emphasis 0.97, an STFT of 800 samples (50 ms Hann window) every
200 samples (12.5 ms, so 80 mel frames a second), 80 Slaney mel bands from 55 to 7600 Hz, magnitudes in
dB relative to 20 dB with a floor at -100 dB, scaled symmetrically into [-4, 4]. The STFT is centred
with reflection padding, as librosa 0.7 (the version Wav2Lip used) did by default.

Decoding to 16 kHz mono is pipeline.media.audio.load_audio's job (shared with the builtin engine);
from its samples this module reads top to bottom: melspectrogram -> mel_windows.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import numpy as np
from scipy import signal

from pipeline.errors import EngineError

SAMPLE_RATE = 16000
PREEMPHASIS = 0.97
N_FFT = 800
HOP = 200
WIN = 800
N_MELS = 80
FMIN, FMAX = 55.0, 7600.0
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0
MAX_ABS_VALUE = 4.0
MEL_FRAMES_PER_SECOND = SAMPLE_RATE / HOP  # 80
WINDOW_STEPS = 16  # mel frames the generator hears per video frame (0.2 s)


@lru_cache(maxsize=1)
def mel_basis() -> np.ndarray:
    """The (80, 401) Slaney-style mel filter bank Wav2Lip used (librosa.filters.mel's defaults)."""
    import librosa

    return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX).astype(np.float64)


def stft_magnitude(wav: np.ndarray) -> np.ndarray:
    """|STFT| (401, frames): centred frames (reflect-padded by n_fft/2), periodic Hann window."""
    padded = np.pad(wav.astype(np.float64), N_FFT // 2, mode="reflect")
    frames = 1 + (len(padded) - N_FFT) // HOP
    strided = np.lib.stride_tricks.as_strided(
        padded, shape=(frames, N_FFT), strides=(padded.strides[0] * HOP, padded.strides[0]), writeable=False)
    window = signal.get_window("hann", WIN, fftbins=True)
    return np.abs(np.fft.rfft(strided * window, n=N_FFT, axis=1)).T


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    """(80, frames) float32 in [-4, 4]: 80 frames per second of 16 kHz audio."""
    if len(wav) <= N_FFT // 2:
        raise EngineError("the audio is too short to lip-sync (under 0.03 s)")
    emphasised = signal.lfilter([1.0, -PREEMPHASIS], [1.0], wav.astype(np.float64))
    mel = mel_basis() @ stft_magnitude(emphasised)
    min_level = 10.0 ** (MIN_LEVEL_DB / 20.0)
    db = 20.0 * np.log10(np.maximum(min_level, mel)) - REF_LEVEL_DB
    scaled = (2 * MAX_ABS_VALUE) * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS_VALUE
    return np.clip(scaled, -MAX_ABS_VALUE, MAX_ABS_VALUE).astype(np.float32)


def window_count(mel_frames: int, fps: float) -> int:
    """How many video frames the audio drives: Wav2Lip's loop stops at the first window that would run off
    the end (that last frame gets the final 16 steps)."""
    if mel_frames < WINDOW_STEPS:
        return 1
    step = MEL_FRAMES_PER_SECOND / fps
    count = 0
    while int(count * step) + WINDOW_STEPS <= mel_frames:
        count += 1
    return count + 1


def mel_window(mel: np.ndarray, index: int, fps: float) -> np.ndarray:
    """The (80, 16) window for video frame *index*: starts at int(index * 80 / fps), clamped to the end."""
    frames = mel.shape[1]
    if frames < WINDOW_STEPS:  # shorter than 0.2 s: pad with silence (the floor value)
        return np.pad(mel, ((0, 0), (0, WINDOW_STEPS - frames)), constant_values=-MAX_ABS_VALUE)
    start = int(index * (MEL_FRAMES_PER_SECOND / fps))
    start = min(start, frames - WINDOW_STEPS)
    return mel[:, start:start + WINDOW_STEPS]


def mel_windows(mel: np.ndarray, fps: float) -> Iterator[np.ndarray]:
    """Every frame's window, in order (window_count of them)."""
    for index in range(window_count(mel.shape[1], fps)):
        yield mel_window(mel, index, fps)
