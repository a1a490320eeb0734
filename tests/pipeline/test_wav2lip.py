"""Wav2Lip: the generator against the published architecture, its checkpoint loader, its mel front end
against an independent computation from the published formulas, the face crops on real people (the lips
in the lower half the model repaints), and the engine end to end on CPU."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from pipeline.engines import EngineError, EngineUnavailable, JobSpec, get_engine, no_progress
from pipeline.engines.wav2lip import audio as w2l_audio
from pipeline.engines.wav2lip import engine as w2l_engine
from pipeline.engines.wav2lip.model import Wav2Lip, load_checkpoint
from pipeline.face import FaceBox, FaceTracker
from pipeline.lips import Lips, LipTracker, LowerFace
from pipeline.media.audio import load_audio
from pipeline.media.decode import open_video, read_frames
from pipeline.media.pingpong import source_index
from pipeline.media.probe import probe
from tests import media
from tests.lipsync_support import decode

# ---------------------------------------------------------------------------------------------------
# The published generator (Rudrabha/Wav2Lip models/wav2lip.py + models/conv.py), written out flat:
# ("c", cin, cout, kernel) is Conv2d+BatchNorm2d(+ReLU), ("t", ...) ConvTranspose2d+BatchNorm2d(+ReLU),
# ("p", ...) the plain final nn.Conv2d. Every conv has a bias; every BatchNorm has weight and bias.
# ---------------------------------------------------------------------------------------------------
PUBLISHED = (
    # face_encoder_blocks 0..6
    [("c", 6, 16, 7)]
    + [("c", 16, 32, 3)] + [("c", 32, 32, 3)] * 2
    + [("c", 32, 64, 3)] + [("c", 64, 64, 3)] * 3
    + [("c", 64, 128, 3)] + [("c", 128, 128, 3)] * 2
    + [("c", 128, 256, 3)] + [("c", 256, 256, 3)] * 2
    + [("c", 256, 512, 3)] + [("c", 512, 512, 3)]
    + [("c", 512, 512, 3), ("c", 512, 512, 1)]
    # audio_encoder
    + [("c", 1, 32, 3)] + [("c", 32, 32, 3)] * 2
    + [("c", 32, 64, 3)] + [("c", 64, 64, 3)] * 2
    + [("c", 64, 128, 3)] + [("c", 128, 128, 3)] * 2
    + [("c", 128, 256, 3)] + [("c", 256, 256, 3)]
    + [("c", 256, 512, 3), ("c", 512, 512, 1)]
    # face_decoder_blocks 0..6
    + [("c", 512, 512, 1)]
    + [("t", 1024, 512, 3), ("c", 512, 512, 3)]
    + [("t", 1024, 512, 3)] + [("c", 512, 512, 3)] * 2
    + [("t", 768, 384, 3)] + [("c", 384, 384, 3)] * 2
    + [("t", 512, 256, 3)] + [("c", 256, 256, 3)] * 2
    + [("t", 320, 128, 3)] + [("c", 128, 128, 3)] * 2
    + [("t", 160, 64, 3)] + [("c", 64, 64, 3)] * 2
    # output_block
    + [("c", 80, 32, 3), ("p", 32, 3, 1)]
)

# A sample of the public checkpoint's keys (without "module.") and their shapes.
PUBLISHED_SHAPES = {
    "face_encoder_blocks.0.0.conv_block.0.weight": (16, 6, 7, 7),
    "face_encoder_blocks.2.3.conv_block.1.running_var": (64,),
    "face_encoder_blocks.6.1.conv_block.0.weight": (512, 512, 1, 1),
    "audio_encoder.0.conv_block.0.weight": (32, 1, 3, 3),
    "audio_encoder.9.conv_block.0.weight": (256, 128, 3, 3),
    "audio_encoder.12.conv_block.0.weight": (512, 512, 1, 1),
    "face_decoder_blocks.0.0.conv_block.0.weight": (512, 512, 1, 1),
    "face_decoder_blocks.1.0.conv_block.0.weight": (1024, 512, 3, 3),  # ConvTranspose2d: (in, out, k, k)
    "face_decoder_blocks.3.0.conv_block.1.weight": (384,),
    "face_decoder_blocks.6.0.conv_block.0.weight": (160, 64, 3, 3),
    "face_decoder_blocks.6.2.conv_block.0.bias": (64,),
    "output_block.0.conv_block.0.weight": (32, 80, 3, 3),
    "output_block.1.weight": (3, 32, 1, 1),
    "output_block.1.bias": (3,),
}


def _published_parameter_count() -> int:
    total = 0
    for kind, cin, cout, k in PUBLISHED:
        total += cin * cout * k * k + cout  # conv weight + bias
        if kind != "p":
            total += 2 * cout  # BatchNorm weight + bias
    return total


def test_generator_matches_the_published_architecture() -> None:
    model = Wav2Lip()
    state = model.state_dict()
    expected = _published_parameter_count()
    assert expected == 36_298_035  # x 4 bytes x 3 (weights + Adam's two moments) = the ~436 MB wav2lip.pth
    assert sum(p.numel() for p in model.parameters()) == expected
    # 50 conv+BN blocks (7 keys each: conv w/b, BN w/b/mean/var/num_batches_tracked) + the final conv (w, b)
    assert len(PUBLISHED) == 51 and len(state) == 50 * 7 + 2
    for key, shape in PUBLISHED_SHAPES.items():
        assert tuple(state[key].shape) == shape, key


def test_generator_output_shape_and_range() -> None:
    model = Wav2Lip().eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 80, 16), torch.rand(2, 6, 96, 96))
    assert out.shape == (2, 3, 96, 96)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


# -- checkpoint loader -------------------------------------------------------------------------------

def _save(path: Path, state: dict, *, prefix: str = "", extra: dict | None = None) -> Path:
    torch.save({"state_dict": {prefix + k: v for k, v in state.items()}, "optimizer": {"state": {}},
                "global_step": 250000, "global_epoch": 90, **(extra or {})}, path)
    return path


@pytest.fixture(scope="module")
def random_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(4)
    model = Wav2Lip()
    with torch.no_grad():  # make the BatchNorm statistics non-trivial so a wrong load would show
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.state_dict()


@pytest.mark.parametrize("prefix", ["module.", ""])
def test_checkpoint_loads_with_or_without_module_prefix(tmp_path: Path, random_state, prefix: str) -> None:
    path = _save(tmp_path / "wav2lip_gan.pth", random_state, prefix=prefix)
    model = load_checkpoint(path)
    assert not model.training
    loaded = model.state_dict()
    for key in ("face_encoder_blocks.0.0.conv_block.0.weight", "audio_encoder.5.conv_block.1.running_var",
                "output_block.1.bias"):
        assert torch.equal(loaded[key], random_state[key])


def test_checkpoint_without_batchnorm_counters_loads(tmp_path: Path, random_state) -> None:
    old = {k: v for k, v in random_state.items() if not k.endswith("num_batches_tracked")}
    assert isinstance(load_checkpoint(_save(tmp_path / "old.pth", old, prefix="module.")), Wav2Lip)


def test_missing_checkpoint_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match="wav2lip.pth' does not exist.*pipeline.wav2lip.checkpoint"):
        load_checkpoint(tmp_path / "wav2lip.pth")


def test_mismatched_checkpoint_lists_missing_keys_and_shapes(tmp_path: Path, random_state) -> None:
    state = dict(random_state)
    del state["output_block.1.weight"]
    state["face_encoder_blocks.0.0.conv_block.0.weight"] = torch.zeros(32, 6, 3, 3)  # the 192x192 fork
    with pytest.raises(EngineUnavailable) as caught:
        load_checkpoint(_save(tmp_path / "fork.pth", state, prefix="module."))
    message = str(caught.value)
    assert "'fork.pth' does not match the Wav2Lip generator" in message
    assert "1 weight(s) missing (e.g. output_block.1.weight)" in message
    assert "face_encoder_blocks.0.0.conv_block.0.weight is (32, 6, 3, 3), expected (16, 6, 7, 7)" in message


def test_syncnet_checkpoint_is_recognised(tmp_path: Path) -> None:
    state = {"face_encoder.0.conv_block.0.weight": torch.zeros(32, 15, 7, 7),
             "audio_encoder.0.conv_block.0.weight": torch.zeros(32, 1, 3, 3)}
    with pytest.raises(EngineUnavailable, match="lip-sync expert \\(SyncNet\\) checkpoint"):
        load_checkpoint(_save(tmp_path / "lipsync_expert.pth", state))


@pytest.mark.parametrize(("content", "words"), [
    (b"<!DOCTYPE html><html><head><title>wav2lip.pth</title>", "is a web page"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 435801865\n", "Git LFS pointer"),
    (b"\r\n\x00garbage" * 100, "cannot be read as PyTorch weights"),
])
def test_broken_downloads_are_explained(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "wav2lip.pth"
    path.write_bytes(content)
    with pytest.raises(EngineUnavailable, match=words):
        load_checkpoint(path)


def test_checkpoint_without_state_dict(tmp_path: Path) -> None:
    torch.save({"model": "something else", "epoch": 3}, tmp_path / "other.pth")
    with pytest.raises(EngineUnavailable, match="'other.pth' has no \"state_dict\" \\(it holds: model, epoch\\)"):
        load_checkpoint(tmp_path / "other.pth")


# -- mel front end ------------------------------------------------------------------------------------
# An independent implementation of Wav2Lip's audio.melspectrogram from the published formulas
# (hparams: 16 kHz, preemphasis 0.97, n_fft 800, hop 200, win 800, 80 mels 55-7600 Hz, ref 20 dB,
# min -100 dB, symmetric clipping to [-4, 4]; librosa 0.7's centred reflect-padded STFT, Slaney mels).

def _slaney_hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log_step = math.log(6.4) / 27.0
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / log_step, linear)


def _slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    log_step = math.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(log_step * (mel - 15.0)), mel * (200.0 / 3))


def _reference_mel_filters(sr: int = 16000, n_fft: int = 800, n_mels: int = 80, fmin: float = 55.0,
                           fmax: float = 7600.0) -> np.ndarray:
    fft_hz = np.linspace(0, sr / 2, n_fft // 2 + 1)
    edges = _slaney_mel_to_hz(np.linspace(_slaney_hz_to_mel(fmin), _slaney_hz_to_mel(fmax), n_mels + 2))
    filters = np.zeros((n_mels, len(fft_hz)))
    for m in range(n_mels):
        lower, centre, upper = edges[m], edges[m + 1], edges[m + 2]
        rising = (fft_hz - lower) / (centre - lower)
        falling = (upper - fft_hz) / (upper - centre)
        filters[m] = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (upper - lower))  # Slaney area norm
    return filters


def _reference_melspectrogram(wav: np.ndarray) -> np.ndarray:
    x = wav.astype(np.float64)
    emphasised = np.concatenate([[x[0]], x[1:] - 0.97 * x[:-1]])
    padded = np.pad(emphasised, 400, mode="reflect")
    n = np.arange(800)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / 800)  # periodic Hann
    columns = []
    for start in range(0, len(padded) - 800 + 1, 200):
        columns.append(np.abs(np.fft.rfft(padded[start:start + 800] * window)))
    magnitude = np.array(columns).T
    mel = _reference_mel_filters() @ magnitude
    db = 20 * np.log10(np.maximum(1e-5, mel)) - 20
    return np.clip(8 * ((db + 100) / 100) - 4, -4, 4)


def test_mel_filters_match_the_slaney_formula() -> None:
    np.testing.assert_allclose(w2l_audio.mel_basis(), _reference_mel_filters(), rtol=1e-5, atol=1e-9)


def test_mel_front_end_matches_the_published_formulas(speech_wav: Path) -> None:
    wav = load_audio(speech_wav).samples
    assert wav.dtype == np.float32
    duration = soundfile.info(str(speech_wav)).duration
    assert len(wav) == pytest.approx(duration * 16000, abs=200)
    ours = w2l_audio.melspectrogram(wav)
    reference = _reference_melspectrogram(wav)
    assert ours.shape == reference.shape == (80, 1 + len(wav) // 200)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=2e-4)
    assert ours.min() >= -4 and ours.max() <= 4
    assert ours.max() > 0 and (ours == -4).mean() < 0.5  # speech, not silence


def test_mel_of_silence_is_the_floor_and_a_tone_lights_its_band() -> None:
    assert np.all(w2l_audio.melspectrogram(np.zeros(16000, np.float32)) == -4.0)
    t = np.arange(16000) / 16000
    mel = w2l_audio.melspectrogram((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))
    centres = _slaney_mel_to_hz(np.linspace(_slaney_hz_to_mel(55), _slaney_hz_to_mel(7600), 82))[1:-1]
    assert abs(centres[int(np.argmax(mel[:, 40]))] - 1000) < 80


@pytest.mark.parametrize(("fps", "seconds"), [(25.0, 2.0), (30.0, 1.37), (24.0, 0.5), (10.0, 3.0)])
def test_mel_windows_follow_wav2lip_inference(fps: float, seconds: float) -> None:
    mel = np.random.default_rng(0).standard_normal((80, int(seconds * 80) + 1)).astype(np.float32)
    # Wav2Lip's inference.py loop, written out again.
    expected = []
    i = 0
    while True:
        start = int(i * 80.0 / fps)
        if start + 16 > mel.shape[1]:
            expected.append(mel[:, mel.shape[1] - 16:])
            break
        expected.append(mel[:, start:start + 16])
        i += 1
    windows = list(w2l_audio.mel_windows(mel, fps))
    assert len(windows) == len(expected) == w2l_audio.window_count(mel.shape[1], fps)
    for ours, theirs in zip(windows, expected, strict=True):
        assert ours.shape == (80, 16)
        np.testing.assert_array_equal(ours, theirs)


def test_audio_shorter_than_one_window_is_padded_with_silence() -> None:
    mel = np.zeros((80, 10), np.float32)
    windows = list(w2l_audio.mel_windows(mel, 25.0))
    assert len(windows) == 1 and windows[0].shape == (80, 16) and np.all(windows[0][:, 10:] == -4)


# -- the engine ---------------------------------------------------------------------------------------

FPS = 10.0
SIZE = (160, 160)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, random_state) -> Path:
    """A randomly initialised generator in the public checkpoint's format (DataParallel "module." keys)."""
    return _save(tmp_path_factory.mktemp("w2l") / "wav2lip_gan.pth", random_state, prefix="module.")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1.2 s of the astronaut's face at 10 fps (12 frames)."""
    return media.face_clip(tmp_path_factory.mktemp("w2l") / "face.mp4", seconds=1.2, fps=FPS, size=SIZE)


@pytest.fixture(scope="module")
def speech_2s(tmp_path_factory: pytest.TempPathFactory, speech_wav: Path) -> Path:
    """The first 2 s of the speech fixture: longer than the clip, so the clip plays back and forth."""
    return media.convert(speech_wav, tmp_path_factory.mktemp("w2l") / "speech2s.wav", "-t", "2.0")


def _settings(checkpoint: Path | None, **wav2lip) -> dict:
    return {"batch_frames": 8, "crf": 18, "preset": "ultrafast", "builtin": {"detect_every": 5},
            "wav2lip": {"checkpoint": str(checkpoint) if checkpoint else None, "pads": [0, 10, 0, 0],
                        "batch_size": 6, **wav2lip}}


def _frames(path: Path) -> np.ndarray:
    info = open_video(path)
    return np.concatenate(list(read_frames(info, 64)))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


def test_engine_renders_a_clip_end_to_end_on_cpu(tmp_path: Path, checkpoint: Path, clip: Path,
                                                 speech_2s: Path) -> None:
    engine = get_engine("wav2lip", _settings(checkpoint))
    engine.check()
    stages: list[str] = []
    spec = JobSpec(audio=speech_2s, video=clip, output=tmp_path / "out.mp4", device="cpu", workdir=tmp_path)
    result = engine.render(spec, lambda stage, fraction: stages.append(stage))

    out = probe(spec.output)
    assert out.has_video and out.has_audio and (out.width, out.height) == SIZE
    assert out.fps == pytest.approx(FPS)
    assert out.duration == pytest.approx(2.0, abs=0.15)
    assert result.frames == 20 and result.details["faces_rendered"] >= 18
    assert stages[0] == "audio" and "faces" in stages and "render" in stages and stages[-1] == "encode"

    source = _frames(clip)
    rendered = _frames(spec.output)
    assert len(source) == 12 and len(rendered) == 20
    tracker_boxes, lip_frames = engine._face_boxes(open_video(clip), 20, no_progress)  # the boxes the render used
    assert result.details["lip_frames"] == lip_frames >= 10  # the astronaut's lips were found
    for j, frame in enumerate(rendered):
        s = source_index(j, len(source))  # back and forth: 0..11, 10, 9, ...
        x1, y1, x2, y2 = (int(round(v)) for v in tracker_boxes[s])
        outside = np.ones(frame.shape[:2], bool)
        outside[y1:y2, x1:x2] = False
        assert _psnr(frame[outside], source[s][outside]) > 35, f"frame {j} changed outside the face box"
        # The generated (random) mouth replaced the lower middle of the box ...
        my, mx = slice(y1 + int(0.7 * (y2 - y1)), y2 - int(0.15 * (y2 - y1))), \
            slice(x1 + int(0.3 * (x2 - x1)), x2 - int(0.3 * (x2 - x1)))
        assert _psnr(frame[my, mx], source[s][my, mx]) < 25, f"frame {j}: the mouth was not repainted"
        # ... and the box's top half is untouched (the mask starts below it): the frame is its ping-pong source.
        top = slice(y1, y1 + int(0.35 * (y2 - y1)))
        scores = [_psnr(frame[top, x1:x2], other[top, x1:x2]) for other in source]
        assert int(np.argmax(scores)) == s


def test_frames_without_a_face_pass_through(tmp_path: Path, checkpoint: Path, speech_2s: Path) -> None:
    faces = list(media.face_frames(0.6, FPS, SIZE))
    gray = [np.full((SIZE[1], SIZE[0], 3), 128, np.uint8)] * 6
    video = media.write_video(tmp_path / "mixed.mp4", faces + gray, FPS, SIZE)
    audio = media.convert(speech_2s, tmp_path / "a.wav", "-t", "1.2")
    result = get_engine("wav2lip", _settings(checkpoint)).render(
        JobSpec(audio=audio, video=video, output=tmp_path / "out.mp4", workdir=tmp_path))
    assert result.details["faces_rendered"] == 6
    source, rendered = _frames(video), _frames(tmp_path / "out.mp4")
    assert len(rendered) == 12
    for j in range(6, 12):
        assert _psnr(rendered[j], source[j]) > 40
    assert min(_psnr(rendered[j], source[j]) for j in range(6)) < 35  # the faces were repainted


def test_a_video_without_any_face_fails_in_plain_words(tmp_path: Path, checkpoint: Path, speech_2s: Path) -> None:
    video = media.no_face_clip(tmp_path / "pattern.mp4", seconds=1.0, fps=FPS, size=SIZE)
    with pytest.raises(EngineError, match="no face was found in the video 'pattern.mp4'"):
        get_engine("wav2lip", _settings(checkpoint)).render(
            JobSpec(audio=speech_2s, video=video, output=tmp_path / "out.mp4", workdir=tmp_path))
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize(("options", "words"), [
    ({"checkpoint": None}, "pipeline.wav2lip.checkpoint is not set"),
    ({"pads": [0, 10]}, "pipeline.wav2lip.pads must be four whole numbers"),
    ({"batch_size": 0}, "pipeline.wav2lip.batch_size must be a whole number of at least 1"),
    ({"checkpoint": "/nowhere/wav2lip_gan.pth"}, "'/nowhere/wav2lip_gan.pth' does not exist"),
])
def test_check_reports_setup_problems(checkpoint: Path, options: dict, words: str) -> None:
    settings = _settings(checkpoint)
    settings["wav2lip"].update(options)
    with pytest.raises(EngineUnavailable) as caught:
        get_engine("wav2lip", settings).check()
    assert words in str(caught.value)


def test_feather_mask_is_zero_at_the_edges_and_one_over_the_mouth() -> None:
    mask = w2l_engine.feather_mask(90, 80)[..., 0]
    assert mask.shape == (90, 80)
    assert mask[0].max() == 0 and mask[-1].max() == 0 and mask[:, 0].max() == 0 and mask[:, -1].max() == 0
    assert mask[: int(w2l_engine.MASK_TOP * 90)].max() == 0  # the upper part of the face is never touched
    assert mask[70, 40] == 1.0
    assert np.abs(np.diff(mask, axis=0)).max() < 0.2 and np.abs(np.diff(mask, axis=1)).max() < 0.2  # no step


def test_blend_keeps_the_crop_border_and_takes_the_mouth() -> None:
    original = np.full((60, 50, 3), 40, np.uint8)
    generated = np.full((60, 50, 3), 240, np.uint8)
    mixed = w2l_engine.blend(original, generated)
    border = np.concatenate([mixed[0], mixed[-1], mixed[:, 0], mixed[:, -1]])
    assert np.all(border == 40)
    assert np.all(mixed[48, 25] == 240)


def test_boxes_are_smoothed_over_five_frames_within_face_runs() -> None:
    boxes = np.array([[0, 0, 10, 10]] * 3 + [[10, 0, 20, 10]] * 3 + [[np.nan] * 4] + [[50, 50, 60, 60]] * 2,
                     dtype=float)
    smooth = w2l_engine.smooth_boxes(boxes, 5)
    assert smooth[0, 0] == pytest.approx(0.0)  # frames 0-2 (all x=0)
    assert smooth[2, 0] == pytest.approx(4.0)  # frames 0-4: 0, 0, 0, 10, 10
    assert smooth[3, 0] == pytest.approx(6.0)  # frames 1-5
    assert smooth[4, 0] == pytest.approx(7.5)  # frames 2-5 (the run ends at the missing face)
    assert smooth[5, 0] == pytest.approx(10.0)  # frames 3-5
    assert np.isnan(smooth[6]).all()
    assert smooth[7, 0] == pytest.approx(50.0)  # never pulled across the gap


def test_model_input_masks_the_lower_half_and_uses_bgr() -> None:
    red = np.zeros((40, 30, 3), np.uint8)
    red[..., 0] = 255  # RGB red
    faces, mels = w2l_engine.model_input([red], [np.zeros((80, 16), np.float32)])
    assert faces.shape == (1, 6, 96, 96) and mels.shape == (1, 1, 80, 16)
    assert faces[0, 2, :48].min() == 1.0 and faces[0, 0].max() == 0.0  # BGR: red is channel 2
    assert faces[0, :3, 48:].max() == 0.0  # the masked copy's lower half
    assert faces[0, 5].min() == 1.0  # the reference copy is whole


def test_box_reaches_the_chin_with_pads() -> None:
    from pipeline.face import FaceBox

    assert w2l_engine.wav2lip_box(FaceBox(50, 40, 60, 60), [5, 10, 2, 3], 160, 160) == \
        pytest.approx((48, 35, 113, 40 + 1.18 * 60 + 10))
    assert w2l_engine.wav2lip_box(FaceBox(120, 100, 60, 60), [0, 10, 0, 0], 160, 160)[2:] == (160, 160)


def test_lips_move_the_crop_so_they_sit_in_the_lower_half() -> None:
    face = FaceBox(50, 40, 100, 100)
    lips = Lips(cx=100, half_width=20, top=110, seam=118, gap=0, bottom=126, face_w=100, face_h=100)
    x1, y1, x2, y2 = w2l_engine.wav2lip_box(face, [0, 0, 0, 0], 400, 400, lips)
    assert (x1, x2) == (50, 150) and y2 - y1 == pytest.approx(118)  # as wide and high as without lips
    assert (lips.top - y1) / (y2 - y1) == pytest.approx(w2l_engine.LIPS_TOP)
    # A mouth found far too high moves the crop by MAX_SHIFT at most.
    high = Lips(cx=100, half_width=20, top=60, seam=68, gap=0, bottom=76, face_w=100, face_h=100)
    assert w2l_engine.wav2lip_box(face, [0, 0, 0, 0], 400, 400, high)[1] == \
        pytest.approx(40 - w2l_engine.MAX_SHIFT * 118)
    # A wide-open mouth makes the crop taller, to reach below the lower lip.
    wide = Lips(cx=100, half_width=20, top=110, seam=118, gap=40, bottom=166, face_w=100, face_h=100)
    assert w2l_engine.wav2lip_box(face, [0, 0, 0, 0], 400, 400, wide)[3] == \
        pytest.approx(166 + w2l_engine.BELOW_LIPS * 56)


# -- the crops on real people (tests/fixtures/people) -------------------------------------------------

PEOPLE = Path(__file__).resolve().parents[1] / "fixtures" / "people"
CLIPS = [entry["file"] for entry in json.loads((PEOPLE / "people.json").read_text())]
PADS = [0, 10, 0, 0]  # the default pipeline.wav2lip.pads
MIDDLE_MARGIN = 0.05  # the lips' top is at least this far (crop heights) below the model's masked half's edge
CHIN_MARGIN = 0.8  # the crop reaches at least this many lip heights below the lower lip
CORNER_MARGIN = 0.1  # the mouth's corners are at least this far (crop widths) inside the crop
ASPECT = (0.6, 1.6)  # width / height: the crop is resized to 96x96 without distorting the face much


@functools.cache
def _tracked(clip: str) -> tuple[int, int, list, list]:
    """(width, height, faces, lips) of a people clip, tracked as the engine tracks them."""
    frames = decode(PEOPLE / clip)
    faces = FaceTracker(detect_every=5).update(frames)
    pictures = [None if face is None else LowerFace.from_rgb(frame, face)
                for frame, face in zip(frames, faces, strict=True)]
    return frames.shape[2], frames.shape[1], faces, LipTracker(every=5).update(pictures, faces)


def _misplaced(crop: np.ndarray, lips: Lips) -> list[str]:
    """What is wrong with a crop (as _render_batch cuts it) for these lips; empty when nothing is."""
    x1, y1, x2, y2 = (int(round(v)) for v in crop)
    width, height = x2 - x1, y2 - y1
    weight = w2l_engine.feather_mask(height, width)[:, width // 2, 0]
    full = np.flatnonzero(weight >= 0.999)  # rows where the generated face is used whole
    wrong = []
    if lips.top < y1 + (0.5 + MIDDLE_MARGIN) * height or lips.top < y1 + full[0]:
        wrong.append(f"lips' top at {(lips.top - y1) / height:.2f} of the crop: not in the repainted lower half")
    if lips.bottom > y2 - CHIN_MARGIN * lips.height or lips.bottom > y1 + full[-1]:
        wrong.append(f"lips' bottom at {(lips.bottom - y1) / height:.2f} of the crop: the chin is cut off")
    if lips.cx - lips.half_width < x1 + CORNER_MARGIN * width or lips.cx + lips.half_width > x2 - CORNER_MARGIN * width:
        wrong.append("a corner of the mouth is at the crop's side")
    if not ASPECT[0] <= width / height <= ASPECT[1]:
        wrong.append(f"aspect {width / height:.2f}")
    return wrong


@pytest.mark.parametrize("clip", CLIPS)
def test_the_crop_puts_the_lips_in_the_lower_half_on_real_people(clip: str) -> None:
    width, height, faces, lips = _tracked(clip)
    crops = w2l_engine.crop_boxes(faces, lips, PADS, width, height)
    checked = 0
    for k, mouth in enumerate(lips):
        if mouth is None:
            continue
        assert not _misplaced(crops[k], mouth), f"{clip} frame {k}: {_misplaced(crops[k], mouth)}"
        checked += 1
    assert checked >= 0.9 * len(lips)


def test_the_face_box_alone_puts_the_lips_at_the_masks_edge() -> None:
    """Before the lips placed the crop (CHIN_Y from the Haar box alone) a bearded man's upper lip sat at the
    edge of the half the model repaints: the check above fails there."""
    failures = {}
    for clip in CLIPS:
        width, height, faces, lips = _tracked(clip)
        crops = w2l_engine.crop_boxes(faces, [None] * len(faces), PADS, width, height)
        failures[clip] = sum(bool(_misplaced(crops[k], mouth)) for k, mouth in enumerate(lips) if mouth is not None)
    assert failures["beard.mp4"] >= 10, failures
