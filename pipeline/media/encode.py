"""Frames out: H.264 yuv420p + AAC, MP4 with faststart, through an ffmpeg pipe fed from a thread."""

from __future__ import annotations

import contextlib
import queue
import threading
from pathlib import Path

import numpy as np

from pipeline.errors import EngineError
from pipeline.media.decode import VideoInfo, _frame_bytes, _pix_fmt, _StderrTail, frame_size
from pipeline.media.probe import require_tool

AUDIO_BITRATE = "192k"
# swscale matrix -> (colorspace, primaries, transfer) tags written into the output.
_TAGS = {"bt709": ("bt709", "bt709", "bt709"), "bt601": ("smpte170m", "smpte170m", "smpte170m"),
         "fcc": ("fcc", "smpte170m", "smpte170m"), "smpte240m": ("smpte240m", "smpte240m", "smpte240m"),
         "bt2020": ("bt2020nc", "bt2020", "bt709")}


class VideoWriter:
    """Encode RGB batches to H.264 (yuv420p, crf/preset) + AAC of *audio*, MP4 with faststart.

    Writing happens in a thread, so encoding overlaps the work on the next batch. Use as a context
    manager: a clean exit finishes the file (EngineError if ffmpeg failed); an exception removes it.
    """

    def __init__(self, path: str | Path, info: VideoInfo, audio: str | Path, *, crf: int = 20,
                 preset: str = "veryfast", queue_depth: int = 1, pixels: str = "rgb") -> None:
        import ffmpeg

        require_tool("ffmpeg")
        self.path = Path(path)
        self.pixels = pixels
        self.width, self.height = frame_size(info, pixels)
        self.frame_shape = ((_frame_bytes(self.width, self.height, pixels),) if pixels == "yuv420p"
                            else (self.height, self.width, 3))
        self.frames_written = 0
        picture = ffmpeg.input("pipe:", format="rawvideo", pix_fmt=_pix_fmt(pixels), s=f"{self.width}x{self.height}",
                               framerate=f"{info.fps.numerator}/{info.fps.denominator}")
        if pixels == "yuv420p":  # the decoder's own YUV: keep its colour description as it was
            tags = dict(zip(("colorspace", "color_primaries", "color_trc"), info.color_tags, strict=True))
            tags = {key: value for key, value in tags.items() if value}
        else:
            matrix = info.color_matrix if info.color_matrix in _TAGS else "bt601"
            tags = dict(zip(("colorspace", "color_primaries", "color_trc"), _TAGS[matrix], strict=True))
            even_width, even_height = self.width - self.width % 2, self.height - self.height % 2
            if (even_width, even_height) != (self.width, self.height):
                picture = picture.crop(0, 0, even_width, even_height)
            picture = picture.filter("scale", out_color_matrix=matrix, out_range="tv").filter("format", "yuv420p")
        sound = ffmpeg.input(f"file:{Path(audio).absolute()}").audio
        output = ffmpeg.output(
            picture, sound, str(self.path), format="mp4", vcodec="libx264", pix_fmt="yuv420p", crf=crf,
            preset=preset, color_range="tv", acodec="aac", audio_bitrate=AUDIO_BITRATE, movflags="+faststart",
            **tags,
        )
        self.process = output.overwrite_output().global_args("-nostdin", "-v", "error").run_async(
            pipe_stdin=True, pipe_stderr=True)
        self.stderr = _StderrTail(self.process.stderr)
        self.queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=queue_depth)
        self.failure: BaseException | None = None
        self.stopping = False
        self.closed = False
        self.thread = threading.Thread(target=self._pump, name="video-writer", daemon=True)
        self.thread.start()

    def write(self, frames: np.ndarray) -> None:
        """Queue a batch of frames (in the writer's *pixels*); it must not be modified afterwards."""
        if frames.shape[1:] != self.frame_shape or frames.dtype != np.uint8:
            raise ValueError(f"frames of shape {frames.shape}/{frames.dtype} given to a "
                             f"{self.width}x{self.height} {self.pixels} writer")
        if self.failure is not None:
            self._raise_failure()
        self.queue.put(np.ascontiguousarray(frames))
        self.frames_written += len(frames)

    def close(self) -> None:
        """Finish the file; EngineError (with ffmpeg's reason) if encoding failed. A second call does nothing."""
        if self.closed:
            return
        self.closed = True
        self.queue.put(None)
        self.thread.join()
        with contextlib.suppress(BrokenPipeError, OSError):
            self.process.stdin.close()
        code = self.process.wait()
        self.stderr.join()
        if self.failure is not None or code != 0:
            self._raise_failure()

    def abort(self) -> None:
        """Stop encoding and remove the partial file."""
        self.stopping = True
        if self.process.poll() is None:
            self.process.kill()
        self.thread.join()
        self.process.wait()
        self.stderr.join()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        if kind is None:
            try:
                self.close()
            except BaseException:
                self.path.unlink(missing_ok=True)
                raise
        else:
            self.abort()

    def _pump(self) -> None:
        while True:
            try:
                frames = self.queue.get(timeout=0.1)
            except queue.Empty:
                if self.stopping:
                    return
                continue
            if frames is None:
                return
            if self.failure is not None or self.stopping:
                continue  # drain until the end
            try:
                self.process.stdin.write(frames.data)
            except (BrokenPipeError, OSError) as exc:
                self.failure = exc

    def _raise_failure(self) -> None:
        self.process.wait()
        self.stderr.join()
        raise EngineError(f"encoding the result {self.path.name!r} failed ({self.stderr.last_line()}); "
                          "check the free space of the output folder and that the audio file is readable")
