"""Dataset ingestion speed: how long `/start_training` spends reading a zip before it answers.

    python benchmarks/bench_ingest.py [IMAGES]

Builds a zip of IMAGES (default 50) 1024x1024 JPEG photos-like images (noise, which compresses
as badly as photos) with captions in the course layout, then times `dataset.ingest` (bounded
reading, decoding, normalising, PNG saving) and the PNG save alone at the level ingest uses and
at PIL's default level, in turns, and prints milliseconds per image and peak memory.
"""

from __future__ import annotations

import io
import resource
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lora_space.train.dataset import ingest  # noqa: E402


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    folder = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    zip_path = folder / "dataset.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        for index in range(count):
            buffer = io.BytesIO()
            Image.effect_noise((1024, 1024), 40 + index).convert("RGB").save(buffer, "JPEG", quality=90)
            archive.writestr(f"images/img_{index:03d}.jpg", buffer.getvalue())
            archive.writestr(f"captions/img_{index:03d}.txt", f"zz_style, picture {index}")
    print(f"zip: {count} images, {zip_path.stat().st_size / 1e6:.1f} MB")

    started = time.perf_counter()
    result = ingest(zip_path, folder / "dest", trigger_word="zz_style")
    seconds = time.perf_counter() - started
    print(f"ingest: {seconds:.2f} s, {seconds / count * 1000:.0f} ms/image, {result.report.images_used} used")

    sample = Image.open(result.dataset[0]["image"]).convert("RGB")
    timings = {1: 0.0, 6: 0.0}
    for _ in range(5):  # in turns
        for level in timings:
            started = time.perf_counter()
            sample.save(io.BytesIO(), format="PNG", compress_level=level)
            timings[level] += (time.perf_counter() - started) / 5
    print(f"PNG save per image: level 1 (ingest) {timings[1] * 1000:.0f} ms, level 6 (PIL default) {timings[6] * 1000:.0f} ms, ratio {timings[6] / timings[1]:.1f}x")
    print(f"peak memory (RSS): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
