"""From sound to mouth motion: how open the mouth is, and how wide, at each video frame.

What this is: a deterministic, hand-written mapping from audio features to two numbers per frame,
written as torch operations on the job's device. It is the "temporal model" stage of the builtin
engine, with no trained weights:

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

import torch

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
    """Per video frame, on the device: opening in [0, 1] (1 = jaw fully dropped), width factor (1 = rest)."""

    opening: torch.Tensor  # (T,) float32
    width: torch.Tensor  # (T,) float32

    def __len__(self) -> int:
        return int(self.opening.shape[0])


def mouth_motion(features: FrameFeatures, device: str | torch.device = "cpu", gain: float = 1.0) -> MouthTrack:
    """The mouth's opening and width at every frame of *features* (see the module docstring)."""
    device = torch.device(device)
    level = torch.as_tensor(features.loudness, dtype=torch.float32, device=device)
    mel_db = torch.as_tensor(features.mel, dtype=torch.float32, device=device)
    power = torch.pow(10.0, mel_db / 10.0)
    band_hz = torch.as_tensor(mel_band_hz(), dtype=torch.float32, device=device)
    fps = features.fps

    target, gate = _loudness_target(level)
    target = target * _sibilant_factor(power, band_hz)
    closure = _closures(level, gate, max(1, round(CLOSURE_WINDOW_SECONDS * fps)))
    target = torch.where(closure, torch.zeros_like(target), target)
    opening = _follow(target, closure, fps)
    opening = torch.clamp(opening * gain, 0.0, 1.0)

    width_target = _width_target(power, band_hz, voiced=level > gate)
    width = _smooth(width_target, fps, WIDTH_SECONDS)
    return MouthTrack(opening=opening, width=width)


def _loudness_target(level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Opening target from level alone, and the gate level below which the mouth is shut."""
    peak = torch.quantile(level, PEAK_QUANTILE)
    noise = torch.quantile(level, NOISE_QUANTILE)
    gate = torch.maximum(noise + GATE_ABOVE_NOISE_DB, peak - DYNAMIC_RANGE_DB)
    span = torch.clamp(peak - gate, min=1.0)
    target = torch.clamp((level - gate) / span, 0.0, 1.0) ** OPENING_POWER
    return target, gate


def _sibilant_factor(power: torch.Tensor, band_hz: torch.Tensor) -> torch.Tensor:
    """1 for voiced sound, down to SIBILANT_OPENING where most energy is above SIBILANT_SPLIT_HZ."""
    high = power[:, band_hz >= SIBILANT_SPLIT_HZ].sum(dim=1)
    share = high / torch.clamp(power.sum(dim=1), min=1e-12)
    low, full = SIBILANT_SHARE
    return 1.0 - (1.0 - SIBILANT_OPENING) * _smoothstep(low, full, share)


def _closures(level: torch.Tensor, gate: torch.Tensor, window: int) -> torch.Tensor:
    """Frames where the level dips CLOSURE_DIP_DB under louder speech on both sides: lips closed."""
    count = level.shape[0]
    padded = torch.nn.functional.pad(level.view(1, 1, -1), (window, window), value=float(level.min()))
    peaks = torch.nn.functional.max_pool1d(padded, kernel_size=window, stride=1).view(-1)
    before = peaks[:count]  # max of level[t - window .. t - 1]
    after = peaks[window + 1:window + 1 + count]  # max of level[t + 1 .. t + window]
    around = torch.minimum(before, after)
    return (around > gate) & (level < around - CLOSURE_DIP_DB)


def _follow(target: torch.Tensor, closure: torch.Tensor, fps: float) -> torch.Tensor:
    """Move towards the target: fast when opening, slower when closing, snapping shut on closures."""
    open_rate, close_rate, snap_rate = (_rate(seconds, fps) for seconds in (OPEN_SECONDS, CLOSE_SECONDS,
                                                                             SNAP_SECONDS))
    rate_when_closing = torch.where(closure, torch.full_like(target, snap_rate), torch.full_like(target, close_rate))
    out = torch.empty_like(target)
    state = torch.zeros((), dtype=target.dtype, device=target.device)
    for t in range(target.shape[0]):  # a recursive filter: each frame depends on the one before
        rate = torch.where(target[t] > state, open_rate, rate_when_closing[t])
        state = state + rate * (target[t] - state)
        out[t] = state
    return out


def _width_target(power: torch.Tensor, band_hz: torch.Tensor, voiced: torch.Tensor) -> torch.Tensor:
    """Width factor from the voiced-band spectral centroid relative to the speaker's median."""
    low, high = VOICED_BAND_HZ
    in_band = (band_hz >= low) & (band_hz <= high)
    band_power = power[:, in_band]
    centroid = (band_power * band_hz[in_band]).sum(dim=1) / torch.clamp(band_power.sum(dim=1), min=1e-12)
    if not bool(voiced.any()):
        return torch.ones_like(centroid)
    typical = torch.median(centroid[voiced])
    relative = (centroid - typical) / torch.clamp(typical, min=1.0)
    width = 1.0 + torch.clamp(WIDTH_PER_CENTROID * relative, -WIDTH_RANGE, WIDTH_RANGE)
    return torch.where(voiced, width, torch.ones_like(width))


def _smooth(values: torch.Tensor, fps: float, seconds: float) -> torch.Tensor:
    """Zero-phase exponential smoothing (forward then backward), so it adds no delay."""
    rate = _rate(seconds, fps)
    forward = _exponential(values, rate)
    return _exponential(forward.flip(0), rate).flip(0)


def _exponential(values: torch.Tensor, rate: float) -> torch.Tensor:
    """y[t] = y[t-1] + rate * (x[t] - y[t-1]) as a convolution with a truncated exponential kernel."""
    taps = max(1, math.ceil(math.log(1e-3) / math.log(1.0 - rate))) if rate < 1.0 else 1
    kernel = rate * (1.0 - rate) ** torch.arange(taps, dtype=values.dtype, device=values.device)
    kernel = kernel / kernel.sum()
    padded = torch.nn.functional.pad(values.view(1, 1, -1), (taps - 1, 0), mode="replicate")
    return torch.nn.functional.conv1d(padded, kernel.flip(0).view(1, 1, -1)).view(-1)


def _rate(seconds: float, fps: float) -> float:
    """Per-frame step of a first-order follower with time constant *seconds*."""
    return 1.0 - math.exp(-1.0 / (fps * seconds))


def _smoothstep(low: float, high: float, x: torch.Tensor) -> torch.Tensor:
    t = torch.clamp((x - low) / (high - low), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)
