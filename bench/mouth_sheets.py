"""Before/after mouth crops of the builtin engine on each test person (tests/fixtures/people): PNG sheets.

Not a timing: what a viewer judges. Each person's clip is rendered speaking the first 4 s of the
espeak-ng test sentence; the sheet shows the same frames before (top row: the template) and after
(bottom row: the output), cropped around the mouth and enlarged. Written to docs/images/mouth/.

    .venv/bin/python bench/mouth_sheets.py                 # all people
    .venv/bin/python bench/mouth_sheets.py beard turn      # some
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from pipeline.face import FaceTracker  # noqa: E402
from tests import media  # noqa: E402
from tests.lipsync_support import decode, render  # noqa: E402

PEOPLE = ROOT / "tests" / "fixtures" / "people"
OUT = ROOT / "docs" / "images" / "mouth"
FRAMES = 7  # frames shown per person, evenly spread over the clip
TILE = (160, 104)  # each crop is scaled to this (width, height)
CROP = (0.15, 0.85, 0.55, 1.05)  # x0, x1, y0, y1 of the face box shown
SECONDS = 4.0


def sheet(clip: Path, speech: Path, scratch: Path) -> np.ndarray:
    """The before/after sheet of one clip (RGB)."""
    import cv2

    output = scratch / f"{clip.stem}.mp4"
    render(speech, clip, output)
    before, after = decode(clip), decode(output)
    count = min(len(before), len(after))
    faces = FaceTracker().update(before[:count])
    rows: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    for index in np.linspace(3, count - 4, FRAMES).round().astype(int):
        face = faces[index]
        if face is None:
            continue
        x0, x1, y0, y1 = CROP
        left, right = max(0, round(face.x + x0 * face.w)), round(face.x + x1 * face.w)
        top, bottom = max(0, round(face.y + y0 * face.h)), round(face.y + y1 * face.h)
        for row, frames in zip(rows, (before, after), strict=True):
            row.append(cv2.resize(frames[index, top:bottom, left:right], TILE, interpolation=cv2.INTER_CUBIC))
    gap = np.full((4, TILE[0] * len(rows[0]), 3), 255, dtype=np.uint8)
    return np.vstack([np.hstack(rows[0]), gap, np.hstack(rows[1])])


def main() -> int:
    from PIL import Image

    wanted = set(sys.argv[1:])
    people = [entry["file"] for entry in json.loads((PEOPLE / "people.json").read_text())]
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lipsyncd-mouths-") as folder:
        scratch = Path(folder)
        sentence = media.speech(scratch / "speech.wav")
        speech = scratch / "speech-4s.wav"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(sentence), "-t", str(SECONDS), str(speech)],
                       check=True)
        for name in people:
            if wanted and Path(name).stem not in wanted:
                continue
            target = OUT / f"{Path(name).stem}.png"
            image = sheet(PEOPLE / name, speech, scratch)
            # 256 colours (Pillow's median cut) keep a sheet small enough to live in the repository.
            Image.fromarray(image).quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
            print(f"{target.relative_to(ROOT)}: {target.stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
