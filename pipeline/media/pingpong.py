"""Exactly as many frames as the audio needs: the video cut, or played back and forth ("ping-pong").

Ping-pong needs frames in reverse, which a video decoder cannot give cheaply, so the source frames that
will be shown in reverse are kept in a file in the scratch folder during the first pass: as decoded when
they take at most RAW_CACHE_BYTES and a quarter of the free space (a short avatar clip: reading one back
is a copy), else as JPEG (quality 95, 4:4:4; encoding and decoding one costs about 15 ms at 720p). Memory
never grows with the video's length.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import EngineError
from pipeline.media.decode import VideoInfo, _frame_bytes, frame_size, read_frames

REVERSE_SLACK_FRAMES = 10  # extra frames cached in case the frame count estimate is a little off
CACHE_ALL_FRAMES = 100  # a video this short plays back and forth entirely from the cache
JPEG_QUALITY = 95
RAW_CACHE_BYTES = 512 * 1024 * 1024  # frames kept uncompressed up to this much scratch file


@dataclass
class FrameBatch:
    """Consecutive output frames: frames[k] is output frame first + k and shows source frame sources[k]."""

    frames: np.ndarray  # writable uint8: (B, H, W, 3) RGB/BGR, or (B, H*W*3/2) yuv420p (see yuv_planes)
    sources: np.ndarray  # (B,) int64 source frame index
    first: int  # output index of frames[0]

    def __len__(self) -> int:
        return len(self.frames)


def source_index(output_index: int, n_source: int) -> int:
    """Which source frame output frame *output_index* shows when the video plays back and forth."""
    if n_source <= 1:
        return 0
    period = 2 * n_source - 2
    phase = output_index % period
    return phase if phase < n_source else period - phase


def frames_for_audio(info: VideoInfo, n_frames: int, batch_frames: int, scratch: Path,
                     pixels: str = "rgb") -> Iterator[FrameBatch]:
    """Exactly *n_frames* output frames in batches: the video cut, or played back and forth, to fit.

    Batches hold at most *batch_frames* frames; a batch ends where the direction turns. Forward passes
    are decoded (again) from the video; reverse passes come from a JPEG cache filled on the first pass.
    """
    estimate = info.estimated_frames
    cache: _FrameCache | None = None
    if n_frames > estimate - 2:
        # Keep every frame a reverse pass may show: output frame j >= N shows 2N - 2 - j (down to 0,
        # where the next forward pass starts), so with n output frames it reaches down to 2N - 1 - n.
        keep_from = max(0, 2 * estimate - 1 - n_frames - REVERSE_SLACK_FRAMES)
        keep_from = 0 if estimate <= CACHE_ALL_FRAMES else keep_from
        cache = _FrameCache(scratch, info, pixels, keep_from=keep_from, expected=estimate - keep_from)
    try:
        n_source = 0
        for frames in read_frames(info, batch_frames, limit=n_frames, pixels=pixels):
            if cache is not None:
                cache.put_many(n_source, frames)
            yield FrameBatch(frames, np.arange(n_source, n_source + len(frames)), n_source)
            n_source += len(frames)
        produced = n_source
        if produced >= n_frames:
            return
        # The video is shorter than the audio: back and forth until the audio ends.
        if n_source <= CACHE_ALL_FRAMES:  # short: every pass from the cache, no decoder restarts
            keep, stop = range(0, n_source), n_source
        else:
            keep, stop = range(max(0, 2 * n_source - 1 - n_frames), n_source - 1), n_source - 1
        if cache is None:
            cache = _FrameCache(scratch, info, pixels, keep_from=keep.start, expected=len(keep))
        if not cache.covers(keep):  # the frame count estimate was off: decode the missing frames again
            cache.keep_from = min(cache.keep_from, keep.start)
            _fill_cache(cache, info, batch_frames, stop=stop, pixels=pixels)
        while produced < n_frames:
            window = [source_index(j, n_source) for j in range(produced, min(n_frames, produced + batch_frames))]
            run = _one_direction(window, n_source)
            if cache.covers(run):
                yield FrameBatch(cache.get_many(run), np.asarray(run, dtype=np.int64), produced)
                produced += len(run)
                continue
            # A forward pass (reverse passes are always cached): decode it from the video again.
            length = min(n_source - run[0], n_frames - produced)
            for batch in _decode_run(info, run[0], run[0] + length, batch_frames, produced, pixels):
                produced += len(batch)
                yield batch
    finally:
        if cache is not None:
            cache.close()


def _one_direction(indices: list[int], n_source: int) -> list[int]:
    """The leading run of *indices* that moves in one direction (a turn starts a new batch)."""
    if n_source <= 1 or len(indices) < 2:
        return indices
    step = indices[1] - indices[0]
    end = 1
    while end < len(indices) and indices[end] - indices[end - 1] == step:
        end += 1
    return indices[:end]


def _decode_run(info: VideoInfo, start: int, stop: int, batch_frames: int, first_output: int,
                pixels: str) -> Iterator[FrameBatch]:
    """Source frames [start, stop) decoded again from the start of the video, exactly as the first pass."""
    index = 0
    for frames in read_frames(info, batch_frames, limit=stop, pixels=pixels):
        if index + len(frames) > start:
            keep = frames[max(0, start - index):]
            first_source = max(index, start)
            yield FrameBatch(keep, np.arange(first_source, first_source + len(keep)), first_output)
            first_output += len(keep)
        index += len(frames)


def _fill_cache(cache: _FrameCache, info: VideoInfo, batch_frames: int, stop: int, pixels: str) -> None:
    """Decode frames [0, stop) into the cache (when the frame count estimate was too far off)."""
    index = 0
    for frames in read_frames(info, batch_frames, limit=stop, pixels=pixels):
        cache.put_many(index, frames)
        index += len(frames)


class _FrameCache:
    """Source frames kept in one scratch file, raw or as JPEG (see the module docstring), for reading in any order."""

    def __init__(self, folder: Path, info: VideoInfo, pixels: str, keep_from: int = 0, expected: int = 0) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.keep_from = keep_from
        self.pixels = pixels
        self.width, self.height = frame_size(info, pixels)
        self.shape = ((_frame_bytes(self.width, self.height, pixels),) if pixels == "yuv420p"
                      else (self.height, self.width, 3))
        needed = (expected + REVERSE_SLACK_FRAMES) * _frame_bytes(self.width, self.height, pixels)
        self.raw = needed <= min(RAW_CACHE_BYTES, shutil.disk_usage(folder).free // 4)  # never the one that fills it
        self.path = folder / f".frames-{id(self):x}.{'raw' if self.raw else 'jpg'}cache"
        self.file = open(self.path, "w+b")  # noqa: SIM115 (closed in close())
        self.where: dict[int, tuple[int, int]] = {}

    def put_many(self, first: int, frames: np.ndarray) -> None:
        """Keep frames first, first + 1, ... (those from keep_from on that are not kept yet)."""
        for offset, frame in enumerate(frames):
            index = first + offset
            if index < self.keep_from or index in self.where:
                continue
            data = memoryview(np.ascontiguousarray(frame)).cast("B") if self.raw else self._jpeg(frame)
            self.file.seek(0, 2)
            position = self.file.tell()
            self.file.write(data)
            self.where[index] = (position, len(data))

    def _jpeg(self, frame: np.ndarray) -> bytes:
        import cv2

        params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                  cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
        if frame.ndim == 1:  # yuv420p: the planes as one grey picture (H * 3/2 rows of W)
            frame = frame.reshape(-1, self.width)
        ok, data = cv2.imencode(".jpg", frame, params)  # RGB is stored as if BGR, read back the same way
        if not ok:
            raise EngineError("could not keep a video frame for back-and-forth playback (JPEG encoding "
                              "failed); check the free space of the work folder")
        return data.tobytes()

    def covers(self, run: Iterable[int]) -> bool:
        return all(index in self.where for index in run)

    def get_many(self, run: list[int]) -> np.ndarray:
        # A bytearray behind the array, as in decode._read_batch (no transparent huge pages).
        frames = np.frombuffer(bytearray(len(run) * _frame_bytes(self.width, self.height, self.pixels)),
                               dtype=np.uint8).reshape(len(run), *self.shape)
        for k, index in enumerate(run):
            position, size = self.where[index]
            self.file.seek(position)
            if self.raw:
                self.file.readinto(memoryview(frames[k]).cast("B"))
            else:
                frames[k] = self._unjpeg(self.file.read(size))
        return frames

    def _unjpeg(self, data: bytes) -> np.ndarray:
        import cv2

        mode = cv2.IMREAD_GRAYSCALE if self.pixels == "yuv420p" else cv2.IMREAD_COLOR
        return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), mode).reshape(self.shape)

    def close(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)
