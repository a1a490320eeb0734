"""The builtin engine: lip-sync with no downloaded weights (see builtin.lipsync for the stages).

Settings come from the `pipeline` config section (batch_frames, crf, preset, builtin.detect_every,
builtin.mouth_gain); a job's options may override mouth_gain and detect_every.
"""

from __future__ import annotations

from pipeline.engines.base import Engine, JobSpec, Option, ProgressFn, RenderResult, no_progress
from pipeline.errors import EngineUnavailable
from pipeline.media.probe import require_tool


class BuiltinEngine(Engine):
    name = "builtin"
    checked_by_render = True  # check() loads OpenCV's cascade; render() does too (in a thread)
    options = {
        "mouth_gain": Option(float, 0.0, 4.0, "how far the mouth opens; 1 is as measured"),
        "detect_every": Option(int, 1, 100, "frames between full face detections"),
    }

    def check(self) -> None:
        """ffmpeg and OpenCV's face cascade must be there (torch too, for a GPU: it comes with lipsyncd)."""
        from pipeline.errors import EngineError

        try:
            require_tool("ffmpeg")
            require_tool("ffprobe")
        except EngineError as exc:
            raise EngineUnavailable(str(exc)) from None
        try:
            from pipeline.face import FaceDetector

            FaceDetector()
        except (ImportError, RuntimeError) as exc:
            raise EngineUnavailable(f"the builtin engine cannot start: {exc}; reinstall lipsyncd's Python "
                                    "dependencies (./dev.sh setup)") from None

    def render(self, spec: JobSpec, progress: ProgressFn = no_progress) -> RenderResult:
        from pipeline.engines.builtin.lipsync import BuiltinSettings, lipsync

        settings = BuiltinSettings.from_config(self.settings, self.check_options(spec.options))
        return lipsync(spec.audio, spec.video, spec.output, settings=settings, device=spec.device,
                       workdir=spec.workdir, progress=progress)
