"""Audio features for lip-sync: decode with ffmpeg, then per-video-frame log-mel and loudness.

Reads top to bottom as a pipeline: load_audio() decodes any format ffmpeg reads (wav, mp3, m4a/aac,
ogg/opus, flac, or the sound track of a video) to 16 kHz mono float32; frame_features() turns the
samples into one row per video frame, so the rest of the pipeline never thinks about sample rates.

The mel front end is plain numpy (a Hann-windowed STFT and a Slaney mel filterbank, as librosa computes
them; tests/pipeline/test_audio.py checks the two agree): importing librosa and its numba functions'
first-call compile cost a cold `lipsyncd render` more than the whole audio stage.

Timing convention: sample 0 is time 0 of the file, i.e. the start of its earliest stream (as a player
and ffmpeg's muxer see it): a sound track that starts after the picture is padded with silence. Video
frame i covers [i / fps, (i + 1) / fps).
"""

from __future__ import annotations

import functools
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.errors import EngineError
from pipeline.media.probe import Limits, check_complete, probe, require_tool

SAMPLE_RATE = 16000  # Hz: speech needs nothing above 8 kHz
N_FFT = 400  # 25 ms analysis window
HOP_LENGTH = 160  # 10 ms between mel columns (100 columns per second)
N_MELS = 80
FMAX = SAMPLE_RATE / 2
SILENCE_DBFS = -55.0  # loudest frame below this: the audio is treated as silent
LOUDNESS_FLOOR_DBFS = -100.0  # digital silence is reported as this, not -inf
BLOCK_FRAMES = 4096  # video frames of loudness summed at a time
POWER_FLOOR = 1e-10  # mel power floor before the log (librosa's amin): -100 dB
BLOCK_COLUMNS = 6000  # mel columns (60 s) computed at a time: memory stays flat in the audio's length


@dataclass(frozen=True)
class Audio:
    """Decoded mono samples at SAMPLE_RATE, and the file they came from."""

    samples: np.ndarray  # float32, shape (n,)
    path: Path

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE


@dataclass(frozen=True)
class FrameFeatures:
    """One row per video frame."""

    fps: float
    mel: np.ndarray  # (n_frames, N_MELS) log power in dB, columns low to high frequency
    loudness: np.ndarray  # (n_frames,) RMS level in dBFS, floored at LOUDNESS_FLOOR_DBFS

    @property
    def n_frames(self) -> int:
        return len(self.loudness)


def load_audio(path: str | Path, role: str = "audio", max_seconds: float | None = None) -> Audio:
    """Decode the first audio stream of *path* to 16 kHz mono float32; EngineError names the file if it can't.

    The whole sound is held in memory, so *max_seconds* (pipeline.max_seconds) is checked from the probe
    before decoding, and decoding stops just past it should the container understate its length.
    """
    import ffmpeg

    path = Path(path)
    info = probe(path, role)
    if not info.has_audio:
        raise EngineError(f"the {role} {path.name!r} has no sound track; give an audio file "
                          "(wav, mp3, m4a, ogg, flac) or a video that has sound")
    limits = Limits(max_seconds=max_seconds, max_pixels=None)
    limits.check_sound(info, role)
    require_tool("ffmpeg")
    cap = {} if max_seconds is None else {"t": max_seconds + 1.0}
    stream = (
        ffmpeg.input(f"file:{path.absolute()}")
        .audio.filter("aresample", first_pts=0)  # sample 0 = time 0 of the file
        .output("pipe:", format="f32le", acodec="pcm_f32le", ac=1, ar=SAMPLE_RATE, **cap)
        .global_args("-nostdin", "-v", "error")
    )
    expected = info.duration if max_seconds is None else min(info.duration, max_seconds)
    samples, code, stderr = _decode_into_array(stream.compile(), int((expected + 1.0) * SAMPLE_RATE))
    if code != 0:
        tail = stderr.decode("utf-8", "replace").strip().splitlines()
        detail = tail[-1] if tail else "ffmpeg could not decode it"
        raise EngineError(f"the {role} {path.name!r} could not be decoded ({detail}); "
                          "export it again as WAV or MP3 and drop it again") from None
    if len(samples) < SAMPLE_RATE // 10:
        raise EngineError(f"the {role} {path.name!r} holds less than 0.1 s of sound; "
                          "check that it was exported completely")
    # Sample 0 is time 0 of the file, so the sound read is what follows the track's own start.
    check_complete(path, role, len(samples) / SAMPLE_RATE - info.audio_start, info.audio_duration)
    limits.check_sound(replace(info, audio_duration=len(samples) / SAMPLE_RATE), role)  # the container lied
    return Audio(samples=samples, path=path)


def _decode_into_array(argv: list[str], capacity: int) -> tuple[np.ndarray, int, bytes]:
    """Run ffmpeg and read its float32 output straight into one array (grown only if the probe was short):
    the samples are held once, not also as the bytes of the pipe. Returns samples, exit status, stderr."""
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors)
        assert process.stdout is not None
        buffer = np.empty(max(capacity, SAMPLE_RATE), dtype=np.float32)
        filled = 0  # bytes
        try:
            while True:
                if filled == buffer.nbytes:
                    grown = np.empty(2 * len(buffer), dtype=np.float32)
                    grown[:len(buffer)] = buffer
                    buffer = grown
                count = process.stdout.readinto(memoryview(buffer).cast("B")[filled:])
                if not count:
                    break
                filled += count
        finally:
            process.stdout.close()
            code = process.wait()
        errors.seek(0)
        stderr = errors.read()
    return buffer[:filled // 4], code, stderr


def frame_count(duration: float, fps: float) -> int:
    """Video frames needed to cover *duration* seconds: the output lasts as long as the audio."""
    return max(1, round(duration * fps))


def frame_loudness(samples: np.ndarray, fps: float, n_frames: int) -> np.ndarray:
    """RMS level in dBFS of the samples under each video frame (a frame past the end is silent).

    Summed a block of frames at a time, so the extra memory does not grow with the audio's length.
    """
    edges = np.round(np.arange(n_frames + 1) * SAMPLE_RATE / fps).astype(np.int64)
    edges = np.clip(edges, 0, len(samples))
    energy = np.zeros(n_frames, dtype=np.float64)
    for first in range(0, n_frames, BLOCK_FRAMES):
        last = min(n_frames, first + BLOCK_FRAMES)
        block = samples[edges[first]:edges[last]].astype(np.float64) ** 2
        cumulative = np.concatenate([[0.0], np.cumsum(block)])
        local = edges[first:last + 1] - edges[first]
        energy[first:last] = cumulative[local[1:]] - cumulative[local[:-1]]
    counts = np.maximum(edges[1:] - edges[:-1], 1)
    mean_square = energy / counts
    with np.errstate(divide="ignore"):
        level = 10.0 * np.log10(mean_square)
    return np.maximum(level, LOUDNESS_FLOOR_DBFS).astype(np.float32)


def frame_mel(samples: np.ndarray, fps: float, n_frames: int) -> np.ndarray:
    """Log-mel power (dB) averaged over the mel columns whose centres fall inside each video frame.

    The columns are those of librosa.feature.melspectrogram(center=True, zero padding), computed
    BLOCK_COLUMNS at a time from just the samples each block needs, so memory does not grow with the
    audio's length beyond the samples themselves.
    """
    n_columns = 1 + len(samples) // HOP_LENGTH
    mel_basis = mel_filterbank()
    column_times = np.arange(n_columns) * HOP_LENGTH / SAMPLE_RATE
    frame_of_column = np.floor(column_times * fps).astype(np.int64)
    counts = np.bincount(frame_of_column[frame_of_column < n_frames], minlength=n_frames)[:n_frames]
    # Frames shorter than a hop (fps > 100) or past the end take the nearest column.
    empty = np.flatnonzero(counts == 0)
    nearest = np.clip(np.round((empty + 0.5) / fps * SAMPLE_RATE / HOP_LENGTH).astype(np.int64), 0, n_columns - 1)
    sums = np.zeros((n_frames, N_MELS), dtype=np.float64)
    half = N_FFT // 2
    for first in range(0, n_columns, BLOCK_COLUMNS):
        last = min(n_columns, first + BLOCK_COLUMNS)
        start, stop = first * HOP_LENGTH - half, (last - 1) * HOP_LENGTH + half
        segment = np.zeros(stop - start, dtype=np.float32)
        segment[max(0, -start):len(segment) - max(0, stop - len(samples))] = samples[max(0, start):min(stop,
                                                                                                       len(samples))]
        spectrum = power_spectrum(segment)
        power = mel_basis @ spectrum  # (N_MELS, last - first)
        frames = frame_of_column[first:last]
        inside = frames < n_frames
        np.add.at(sums, frames[inside], power[:, inside].T)
        wanted = (nearest >= first) & (nearest < last)
        sums[empty[wanted]] = power[:, nearest[wanted] - first].T
    mean_power = sums / np.maximum(counts, 1)[:, None]
    return (10.0 * np.log10(np.maximum(mean_power, POWER_FLOOR))).astype(np.float32)


def mel_band_hz() -> np.ndarray:
    """Centre frequency (Hz) of each of the N_MELS bands of frame_mel()."""
    return _mel_frequencies(N_MELS + 2, 0.0, FMAX)[1:-1]


def power_spectrum(segment: np.ndarray) -> np.ndarray:
    """|STFT|^2, (1 + N_FFT // 2, columns): periodic Hann window, HOP_LENGTH apart, no padding (as
    librosa.stft(center=False) in float32)."""
    columns = 1 + (len(segment) - N_FFT) // HOP_LENGTH
    frames = np.lib.stride_tricks.as_strided(segment, shape=(columns, N_FFT),
                                             strides=(segment.strides[0] * HOP_LENGTH, segment.strides[0]))
    spectrum = np.fft.rfft(frames * _hann(), axis=1).astype(np.complex64)
    return (spectrum.real ** 2 + spectrum.imag ** 2).T


@functools.cache
def mel_filterbank() -> np.ndarray:
    """(N_MELS, 1 + N_FFT // 2) triangular filters on the Slaney mel scale, Slaney area-normalised: the
    weights librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmax=FMAX) gives."""
    fft_hz = np.linspace(0.0, SAMPLE_RATE / 2, 1 + N_FFT // 2)
    edges = _mel_frequencies(N_MELS + 2, 0.0, FMAX)
    widths = np.diff(edges)
    ramps = np.subtract.outer(edges, fft_hz)
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


@functools.cache
def _hann() -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)  # float64, as librosa's window


# The Slaney mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above.
_MEL_LINEAR_HZ = 200.0 / 3
_MEL_LOG_HZ = 1000.0
_MEL_LOG_STEP = np.log(6.4) / 27.0


def _hz_to_mel(hz: float) -> float:
    if hz < _MEL_LOG_HZ:
        return hz / _MEL_LINEAR_HZ
    return _MEL_LOG_HZ / _MEL_LINEAR_HZ + float(np.log(hz / _MEL_LOG_HZ)) / _MEL_LOG_STEP


def _mel_frequencies(count: int, low_hz: float, high_hz: float) -> np.ndarray:
    """*count* frequencies (Hz) evenly spaced on the mel scale from *low_hz* to *high_hz*."""
    mels = np.linspace(_hz_to_mel(low_hz), _hz_to_mel(high_hz), count)
    log_start = _MEL_LOG_HZ / _MEL_LINEAR_HZ
    return np.where(mels >= log_start, _MEL_LOG_HZ * np.exp(_MEL_LOG_STEP * (mels - log_start)),
                    _MEL_LINEAR_HZ * mels)


def frame_features(audio: Audio, fps: float, n_frames: int | None = None) -> FrameFeatures:
    """Log-mel and loudness per video frame; n_frames defaults to the frames that cover the audio."""
    if n_frames is None:
        n_frames = frame_count(audio.duration, fps)
    return FrameFeatures(
        fps=fps,
        mel=frame_mel(audio.samples, fps, n_frames),
        loudness=frame_loudness(audio.samples, fps, n_frames),
    )


def require_sound(features: FrameFeatures, path: Path, role: str = "audio") -> None:
    """Raise EngineError when the audio has nothing to lip-sync to (silence, or far too quiet)."""
    loudest = float(features.loudness.max()) if features.n_frames else LOUDNESS_FLOOR_DBFS
    if loudest < SILENCE_DBFS:
        level = "digital silence" if loudest <= LOUDNESS_FLOOR_DBFS else f"{loudest:.0f} dBFS at its loudest"
        raise EngineError(f"the {role} {path.name!r} is silent ({level}); there is no speech to lip-sync to: "
                          "check that the right track was exported and that it is not muted")
