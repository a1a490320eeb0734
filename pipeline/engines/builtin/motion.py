"""From sound to mouth motion: how open the mouth is, and how wide, at each video frame.

What this is: a deterministic, hand-written mapping from audio features to two numbers per frame,
in numpy on the CPU whatever the job's device (a few numbers per frame: copying them to a GPU would cost
more than computing them). It is the "temporal model" stage of the builtin engine, with no trained weights:

1. Opening follows the loudness envelope. Each frame's level (dBFS) is placed between a gate (the
   noise floor + 6 dB, or 30 dB under the speech peak, whichever is higher) and the speech peak
   (95th percentile), then compressed a little (power 0.8). Below the gate the mouth is shut.
2. Sibilants and fricatives (s, sh, f: most energy above 4 kHz) open the mouth only a little.
3. Closures: a short dip of 9 dB or more below the speech on both sides (within 0.12 s) is read as
   the lips closing for a stop consonant (p, b, m) and shuts the mouth quickly.
4. The mouth follows these targets with separate time constants: it opens fast (30 ms), closes more
   slowly (80 ms), and snaps shut for closures (15 ms), so it moves smoothly but without lag.
5. Width: the spectral centroid of the voiced band (200-3500 Hz) compared with the speaker's median
   gives a rough vowel shape: dark, rounded vowels (o, u) narrow the mouth, bright ones (ee) widen it,
   by at most 12%.

What it is not: a learned model. It knows no phonemes and no language; it cannot make the exact
shapes of f/v (teeth on lip), th, or the tongue, and it does not anticipate sounds the way real lips
do. It gets the rhythm right (open on loud syllables, closed in pauses and on p/b/m) and a rough
vowel shape, which is what makes a face look like it is speaking this audio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from pipeline.media.audio import FrameFeatures, mel_band_hz

PEAK_QUANTILE = 0.95  # the speech peak level
NOISE_QUANTILE = 0.10  # the noise floor (pauses)
GATE_ABOVE_NOISE_DB = 6.0
DYNAMIC_RANGE_DB = 30.0  # the gate is at most this far under the peak
OPENING_POWER = 0.8  # < 1 opens the mouth more on medium-loud syllables
SIBILANT_SPLIT_HZ = 4000.0
SIBILANT_SHARE = (0.35, 0.60)  # share of power above the split: from no effect to full effect
SIBILANT_OPENING = 0.35  # opening kept on a full sibilant
CLOSURE_DIP_DB = 9.0
CLOSURE_WINDOW_SECONDS = 0.12
OPEN_SECONDS = 0.030
CLOSE_SECONDS = 0.080
SNAP_SECONDS = 0.015
VOICED_BAND_HZ = (200.0, 3500.0)
WIDTH_RANGE = 0.12  # width factor stays within 1 +- this
WIDTH_PER_CENTROID = 0.6  # width change per relative change of the centroid
WIDTH_SECONDS = 0.060


@dataclass(frozen=True)
class MouthTrack:
    """Per video frame: opening in [0, 1] (1 = jaw fully dropped), width factor (1 = rest)."""

    opening: np.ndarray  # (T,) float32
    width: np.ndarray  # (T,) float32

    def __len__(self) -> int:
        return int(self.opening.shape[0])


def mouth_motion(features: FrameFeatures, gain: float = 1.0) -> MouthTrack:
    """The mouth's opening and width at every frame of *features* (see the module docstring)."""
    level = np.asarray(features.loudness, dtype=np.float32)
    power = np.power(np.float32(10.0), np.asarray(features.mel, dtype=np.float32) / np.float32(10.0))
    band_hz = np.asarray(mel_band_hz(), dtype=np.float32)
    fps = features.fps

    target, gate = _loudness_target(level)
    target = target * _sibilant_factor(power, band_hz)
    closure = _closures(level, gate, max(1, round(CLOSURE_WINDOW_SECONDS * fps)))
    target = np.where(closure, np.float32(0.0), target)
    opening = _follow(target, closure, fps)
    opening = np.clip(opening * np.float32(gain), 0.0, 1.0).astype(np.float32)

    width_target = _width_target(power, band_hz, voiced=level > gate)
    width = _smooth(width_target, fps, WIDTH_SECONDS)
    return MouthTrack(opening=opening, width=width.astype(np.float32))


def _loudness_target(level: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """Opening target from level alone, and the gate level below which the mouth is shut."""
    peak = np.float32(np.quantile(level, PEAK_QUANTILE))
    noise = np.float32(np.quantile(level, NOISE_QUANTILE))
    gate = max(noise + np.float32(GATE_ABOVE_NOISE_DB), peak - np.float32(DYNAMIC_RANGE_DB))
    span = max(peak - gate, np.float32(1.0))
    target = np.clip((level - gate) / span, 0.0, 1.0) ** np.float32(OPENING_POWER)
    return target, gate


def _sibilant_factor(power: np.ndarray, band_hz: np.ndarray) -> np.ndarray:
    """1 for voiced sound, down to SIBILANT_OPENING where most energy is above SIBILANT_SPLIT_HZ."""
    high = power[:, band_hz >= SIBILANT_SPLIT_HZ].sum(axis=1)
    share = high / np.maximum(power.sum(axis=1), np.float32(1e-12))
    low, full = SIBILANT_SHARE
    return 1.0 - (1.0 - SIBILANT_OPENING) * _smoothstep(low, full, share)


def _closures(level: np.ndarray, gate: np.float32, window: int) -> np.ndarray:
    """Frames where the level dips CLOSURE_DIP_DB under louder speech on both sides: lips closed."""
    count = level.shape[0]
    padded = np.pad(level, window, constant_values=level.min())
    peaks = sliding_window_view(padded, window).max(axis=1)  # peaks[i] = max(padded[i:i + window])
    before = peaks[:count]  # max of level[t - window .. t - 1]
    after = peaks[window + 1:window + 1 + count]  # max of level[t + 1 .. t + window]
    around = np.minimum(before, after)
    return (around > gate) & (level < around - np.float32(CLOSURE_DIP_DB))


def _follow(target: np.ndarray, closure: np.ndarray, fps: float) -> np.ndarray:
    """Move towards the target: fast when opening, slower when closing, snapping shut on closures."""
    open_rate, close_rate, snap_rate = (np.float32(_rate(seconds, fps))
                                        for seconds in (OPEN_SECONDS, CLOSE_SECONDS, SNAP_SECONDS))
    out = np.empty_like(target)
    state = np.float32(0.0)
    for t, (goal, shut) in enumerate(zip(target, closure, strict=True)):  # each frame depends on the one before
        rate = open_rate if goal > state else snap_rate if shut else close_rate
        state = state + rate * (goal - state)
        out[t] = state
    return out


def _width_target(power: np.ndarray, band_hz: np.ndarray, voiced: np.ndarray) -> np.ndarray:
    """Width factor from the voiced-band spectral centroid relative to the speaker's median."""
    low, high = VOICED_BAND_HZ
    in_band = (band_hz >= low) & (band_hz <= high)
    band_power = power[:, in_band]
    centroid = (band_power * band_hz[in_band]).sum(axis=1) / np.maximum(band_power.sum(axis=1), np.float32(1e-12))
    if not voiced.any():
        return np.ones_like(centroid)
    typical = np.sort(centroid[voiced])[(int(voiced.sum()) - 1) // 2]  # the lower median: a value that occurs
    relative = (centroid - typical) / max(typical, np.float32(1.0))
    width = 1.0 + np.clip(np.float32(WIDTH_PER_CENTROID) * relative, -WIDTH_RANGE, WIDTH_RANGE)
    return np.where(voiced, width, np.float32(1.0))


def _smooth(values: np.ndarray, fps: float, seconds: float) -> np.ndarray:
    """Zero-phase exponential smoothing (forward then backward), so it adds no delay."""
    rate = _rate(seconds, fps)
    forward = _exponential(values, rate)
    return _exponential(forward[::-1], rate)[::-1]


def _exponential(values: np.ndarray, rate: float) -> np.ndarray:
    """y[t] = y[t-1] + rate * (x[t] - y[t-1]) as a convolution with a truncated exponential kernel."""
    taps = max(1, math.ceil(math.log(1e-3) / math.log(1.0 - rate))) if rate < 1.0 else 1
    kernel = (rate * (1.0 - rate) ** np.arange(taps)).astype(np.float32)
    kernel = kernel / kernel.sum()
    padded = np.pad(values, (taps - 1, 0), mode="edge")
    return np.convolve(padded, kernel, mode="valid").astype(np.float32)


def _rate(seconds: float, fps: float) -> float:
    """Per-frame step of a first-order follower with time constant *seconds*."""
    return 1.0 - math.exp(-1.0 / (fps * seconds))


def _smoothstep(low: float, high: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - low) / (high - low), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)
