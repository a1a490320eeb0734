"""A Wav2Lip generator whose parameter names and shapes match the public checkpoints.

Wav2Lip (Prajwal et al., 2020) paints a 96x96 face crop's lower half to match 0.2 s of audio: an audio
encoder turns an 80x16 mel window into a 512-vector, a face encoder turns the masked crop stacked with a
reference crop (6 channels) into skip features, and a decoder upsamples the audio vector back to 96x96,
concatenating the face features of each scale on the way (a U-Net with the audio at its bottom).

The layer tables below follow the published architecture (Rudrabha/Wav2Lip, models/wav2lip.py and
models/conv.py), so `wav2lip.pth` and `wav2lip_gan.pth` load key for key:
`face_encoder_blocks.<i>.<j>.conv_block.{0: conv, 1: batch norm}`, `audio_encoder.<j>.conv_block...`,
`face_decoder_blocks.<i>.<j>.conv_block...`, `output_block.0.conv_block...`, `output_block.1` (a plain conv).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import EngineUnavailable

FACE_SIZE = 96
MEL_STEPS = 16
MEL_BANDS = 80

# (in channels, out channels, kernel, stride, padding, residual); a residual block keeps its channel count.
Conv = tuple[int, int, int, int | tuple[int, int], int, bool]


def _res(channels: int) -> Conv:
    return (channels, channels, 3, 1, 1, True)


FACE_ENCODER: list[list[Conv]] = [
    [(6, 16, 7, 1, 3, False)],                                                       # 96x96
    [(16, 32, 3, 2, 1, False), _res(32), _res(32)],                                  # 48x48
    [(32, 64, 3, 2, 1, False), _res(64), _res(64), _res(64)],                        # 24x24
    [(64, 128, 3, 2, 1, False), _res(128), _res(128)],                               # 12x12
    [(128, 256, 3, 2, 1, False), _res(256), _res(256)],                              # 6x6
    [(256, 512, 3, 2, 1, False), _res(512)],                                         # 3x3
    [(512, 512, 3, 1, 0, False), (512, 512, 1, 1, 0, False)],                        # 1x1
]

AUDIO_ENCODER: list[Conv] = [
    (1, 32, 3, 1, 1, False), _res(32), _res(32),                                     # 80x16
    (32, 64, 3, (3, 1), 1, False), _res(64), _res(64),                               # 27x16
    (64, 128, 3, 3, 1, False), _res(128), _res(128),                                 # 9x6
    (128, 256, 3, (3, 2), 1, False), _res(256),                                      # 3x3
    (256, 512, 3, 1, 0, False), (512, 512, 1, 1, 0, False),                          # 1x1
]

# Each decoder block: an upsampling (transposed) conv (in, out, kernel, stride, padding, output padding),
# then residual convs. Its input is the previous block's output concatenated with a face encoder feature.
DECODER: list[tuple[tuple[int, int, int, int, int, int] | None, list[Conv]]] = [
    (None, [(512, 512, 1, 1, 0, False)]),                                            # 1x1
    ((1024, 512, 3, 1, 0, 0), [_res(512)]),                                          # 3x3
    ((1024, 512, 3, 2, 1, 1), [_res(512), _res(512)]),                               # 6x6
    ((768, 384, 3, 2, 1, 1), [_res(384), _res(384)]),                                # 12x12
    ((512, 256, 3, 2, 1, 1), [_res(256), _res(256)]),                                # 24x24
    ((320, 128, 3, 2, 1, 1), [_res(128), _res(128)]),                                # 48x48
    ((160, 64, 3, 2, 1, 1), [_res(64), _res(64)]),                                   # 96x96
]


class ConvBNReLU(nn.Module):
    """conv -> batch norm (-> + input when residual) -> ReLU; `conv_block` holds the first two, as published."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int | tuple[int, int], padding: int,
                 residual: bool = False) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


class UpConvBNReLU(nn.Module):
    """transposed conv -> batch norm -> ReLU: doubles (or, at the bottom, triples) the spatial size."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int, output_padding: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.ConvTranspose2d(cin, cout, kernel, stride, padding, output_padding),
                                        nn.BatchNorm2d(cout))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


def _stack(convs: list[Conv]) -> list[nn.Module]:
    return [ConvBNReLU(*conv) for conv in convs]


class Wav2Lip(nn.Module):
    """forward(mel (B, 1, 80, 16), faces (B, 6, 96, 96) in 0..1, BGR) -> (B, 3, 96, 96) in 0..1, BGR."""

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList(nn.Sequential(*_stack(block)) for block in FACE_ENCODER)
        self.audio_encoder = nn.Sequential(*_stack(AUDIO_ENCODER))
        self.face_decoder_blocks = nn.ModuleList(
            nn.Sequential(*([UpConvBNReLU(*up)] if up else []), *_stack(convs)) for up, convs in DECODER
        )
        self.output_block = nn.Sequential(ConvBNReLU(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid())

    def forward(self, mel: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        x = self.audio_encoder(mel)
        features = []
        y = faces
        for block in self.face_encoder_blocks:
            y = block(y)
            features.append(y)
        for block in self.face_decoder_blocks:
            x = torch.cat((block(x), features.pop()), dim=1)
        return self.output_block(x)


# -- checkpoints ---------------------------------------------------------------------------------------

def strip_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without the "module." that nn.DataParallel adds (the public checkpoints have it)."""
    return {(key[len("module."):] if key.startswith("module.") else key): value for key, value in state.items()}


def compare(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """What keeps *state* from loading into *model*, in plain words (an empty list: it loads).

    BatchNorm's num_batches_tracked counters are optional: checkpoints from before PyTorch 0.4.1 lack them
    and inference never reads them.
    """
    expected = model.state_dict()
    problems = []
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} is {tuple(state[k].shape)}, expected {tuple(v.shape)}" for k, v in expected.items()
             if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)]
    if missing:
        problems.append(f"{len(missing)} weight(s) missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected weight(s) (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es) (e.g. {'; '.join(wrong[:3])})")
    return problems


def load_checkpoint(path: str | Path) -> Wav2Lip:
    """Build the generator from a Wav2Lip checkpoint on the CPU (eval mode), or raise EngineUnavailable
    naming the file and what is wrong with it."""
    path = Path(path).expanduser()
    hint = ("point pipeline.wav2lip.checkpoint at the wav2lip.pth or wav2lip_gan.pth from the Wav2Lip "
            "project's release")
    if not path.is_file():
        raise EngineUnavailable(f"the Wav2Lip checkpoint {str(path)!r} does not exist; {hint}")
    with open(path, "rb") as handle:
        head = handle.read(200)
    size = path.stat().st_size
    if head.startswith(b"version https://git-lfs"):
        raise EngineUnavailable(f"the Wav2Lip checkpoint {path.name!r} is a Git LFS pointer ({size} bytes), not the "
                                f"weights; fetch the real file (git lfs pull) or download it again; {hint}")
    if head.lstrip()[:1] == b"<":
        raise EngineUnavailable(f"the Wav2Lip checkpoint {path.name!r} is a web page ({size} bytes), not the "
                                "weights: the download link led to a page (on Hugging Face use .../resolve/... "
                                f"rather than .../blob/...); download it again; {hint}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EngineUnavailable(f"the Wav2Lip checkpoint {path.name!r} ({size / 1e6:.1f} MB) cannot be read as "
                                f"PyTorch weights ({detail[:200]}); it may be truncated or another kind of file: "
                                f"download it again; {hint}") from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if state is None and isinstance(checkpoint, dict) and checkpoint and \
            all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        state = checkpoint  # a bare state dict (some mirrors strip the optimizer)
    if not isinstance(state, Mapping):
        keys = ", ".join(list(checkpoint)[:5]) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise EngineUnavailable(f"the Wav2Lip checkpoint {path.name!r} has no \"state_dict\" (it holds: {keys}); "
                                f"{hint}")
    state = strip_prefix(state)
    model = Wav2Lip()
    problems = compare(model, state)
    if problems:
        sync_hint = ""
        if any(k.startswith(("face_encoder.", "audio_encoder.")) for k in state) and \
                not any(k.startswith("face_decoder_blocks.") for k in state):
            sync_hint = " It looks like the lip-sync expert (SyncNet) checkpoint, not the generator."
        raise EngineUnavailable(f"the Wav2Lip checkpoint {path.name!r} does not match the Wav2Lip generator: "
                                f"{'; '.join(problems)}.{sync_hint} {hint[0].upper() + hint[1:]}")
    model.load_state_dict(state, strict=False)
    return model.eval()
