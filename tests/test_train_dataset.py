"""Dataset ingestion: each layout, and each bad zip, image or caption a hostile or careless upload holds.

Every zip is built here in code. Each bad case gets a report entry or a clear `DatasetError`,
and nothing is written outside the destination folder (the file tree is checked).
"""

from __future__ import annotations

import codecs
import io
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest
from PIL import Image

from lora_space.errors import DatasetError
from lora_space.train.archive import ZipLimits
from lora_space.train.dataset import add_trigger_word, bucket_size, ingest, split_names

REPO = Path(__file__).resolve().parents[1]


def png(colour=(200, 30, 30), size=(32, 32), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(colour=(30, 30, 200), size=(40, 24), **options) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def make_zip(path: Path, members: dict[str, bytes], *, infos: list[tuple[zipfile.ZipInfo, bytes]] = ()) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for info, data in infos:
            archive.writestr(info, data)
    return path


def files_under(root: Path) -> set[Path]:
    return {path for path in root.rglob("*") if path.is_file()}


@pytest.fixture
def run(tmp_path):
    """ingest(zip of `members`) into tmp_path/dest, then check that nothing landed outside dest."""
    work = tmp_path / "work"
    work.mkdir()

    def go(members: dict[str, bytes], **options):
        infos = options.pop("infos", ())
        zip_path = make_zip(work / "upload.zip", members, infos=infos)
        dest = work / "dest"
        try:
            return ingest(zip_path, dest, **options)
        finally:
            outside = {path for path in files_under(tmp_path) if dest not in path.parents and path != zip_path}
            assert outside == set(), f"written outside the destination: {outside}"

    return go


def reasons(result) -> dict[str, str]:
    return {item["file"]: item["reason"] for item in result.report.skipped}


# --- layouts -------------------------------------------------------------------------------


def test_course_layout_under_a_top_folder_with_config(run):
    members = {f"training_data/images/image_{n:03d}.jpg": jpeg((n * 20, 10, 10)) for n in range(1, 7)}
    members |= {f"training_data/captions/image_{n:03d}.txt": f"wtrclr, picture {n}".encode() for n in range(1, 7)}
    members["training_data/config.json"] = b'{"max_train_steps": 300, "network_dim": 8}'
    result = run(members, trigger_word="wtrclr")
    report = result.report
    assert report.layout.startswith("course")
    assert (report.images_found, report.images_used, report.captions_matched) == (6, 6, 6)
    assert result.zip_config == {"max_train_steps": 300, "network_dim": 8}
    assert result.captions["image_002"] == "wtrclr, picture 2"
    assert report.captions_missing_trigger == []
    row = result.dataset[0]
    assert set(result.dataset.column_names) >= {"image", "caption", "split", "width", "height", "bucket"}
    assert Path(row["image"]).suffix == ".png" and Path(row["image"]).is_file()
    assert (row["width"], row["height"], row["bucket"]) == (40, 24, "16:9")


def test_flat_pairs_match_stems_ignoring_case(run):
    result = run({"Cat.JPG": jpeg(), "cat.txt": b"a cat", "dog.png": png(), "DOG.TXT": b"a dog", "bird.txt": b"a bird", "fish.png": png((1, 2, 3))})
    report = result.report
    assert report.layout.startswith("flat")
    assert result.captions == {"Cat": "a cat", "dog": "a dog", "fish": ""}
    assert report.images_without_captions == ["fish"]
    assert report.captions_without_images == ["bird"]


def test_imagefolder_metadata_jsonl(run):
    lines = [b'{"file_name": "a.png", "text": "first"}', b'{"file_name": "b.png", "caption": "second"}', b"not json", b'{"file_name": "../x.png", "text": "escape"}']
    result = run({"train/a.png": png(), "train/b.png": png((0, 200, 0)), "train/metadata.jsonl": b"\n".join(lines)})
    assert result.report.layout == "metadata.jsonl"
    assert result.captions == {"a": "first", "b": "second"}
    assert any("line 3" in name for name in reasons(result))
    assert any("line 4" in name for name in reasons(result))


def test_report_counts_trigger_duplicates_small_sizes_and_buckets(run):
    members = {
        "images/a.png": png((10, 10, 10), (1024, 1024)),
        "images/b.png": png((10, 10, 10), (1024, 1024)),  # the same pixels as a
        "images/c.png": png((200, 10, 10), (512, 256)),
        "captions/a.txt": b"zzstyle, a",
        "captions/b.txt": b"zzstyle, b",
        "captions/c.txt": b"no word here",
    }
    result = run(members, trigger_word="zzstyle")
    report = result.report
    assert report.duplicates == [{"kept": "a", "dropped": "b"}]
    assert report.images_used == 2
    assert report.captions_missing_trigger == ["c"]
    assert report.small_images == [{"name": "c", "width": 512, "height": 256}]
    assert report.buckets == {"1:1": 1, "2:1": 1}
    assert report.to_dict()["duplicates"] == report.duplicates


def test_edited_captions_from_the_table_win(run):
    result = run({"a.png": png(), "a.txt": b"old", "b.png": png((0, 0, 9))}, captions={"A": "new caption", "b": "given later"})
    assert result.captions == {"a": "new caption", "b": "given later"}
    assert result.report.images_without_captions == []


def test_validation_split_is_deterministic_and_keeps_a_train_image(run):
    first = split_names(10, 0.2, seed=3)
    assert first == split_names(10, 0.2, seed=3)
    assert first.count("validation") == 2
    assert any(split_names(10, 0.2, seed=seed) != first for seed in range(4, 10))
    notes: list[str] = []
    assert split_names(4, 0.2, seed=0, notes=notes) == ["train"] * 4
    assert "no validation" in notes[0]
    assert split_names(5, 0.5, seed=0).count("train") >= 1
    result = run({f"{n}.png": png((n, n, n)) for n in range(3)})
    assert set(result.dataset["split"]) == {"train"}
    assert result.report.validation_count == 0


def test_add_trigger_word_to_all():
    captions = {"a": "wtrclr, a lake", "b": "a Wtrclr boat", "c": "a hill", "d": ""}
    assert add_trigger_word(captions, "wtrclr") == {"a": "wtrclr, a lake", "b": "a Wtrclr boat", "c": "wtrclr, a hill", "d": "wtrclr"}
    assert add_trigger_word(["x", "wtrclr_2 y"], "wtrclr") == ["wtrclr, x", "wtrclr, wtrclr_2 y"]  # a longer word is not the word
    assert add_trigger_word(["x"], " ") == ["x"]


def test_bucket_sizes_keep_the_area_in_multiples_of_16():
    assert bucket_size("1:1", 1024) == (1024, 1024)
    width, height = bucket_size("16:9", 1024)
    assert width % 16 == 0 and height % 16 == 0 and width > height
    assert abs(width * height - 1024 * 1024) / (1024 * 1024) < 0.05


# --- bad zips ------------------------------------------------------------------------------


def test_not_a_zip_and_an_empty_zip_are_refused_clearly(tmp_path):
    text = tmp_path / "notes.zip"
    text.write_text("hello")
    with pytest.raises(DatasetError, match="not a readable zip"):
        ingest(text, tmp_path / "dest")
    empty = make_zip(tmp_path / "empty.zip", {})
    with pytest.raises(DatasetError, match="no usable image"):
        ingest(empty, tmp_path / "dest2")


def test_a_zip_without_usable_images_says_why(run):
    with pytest.raises(DatasetError) as caught:
        run({"a.txt": b"caption", "b.jpg": b"this is text, not a jpeg"})
    assert "no usable image" in str(caught.value) and "b.jpg" in str(caught.value)


def test_unsafe_names_and_symlinks_are_refused_and_nothing_escapes(run, tmp_path):
    link = zipfile.ZipInfo("images/link.png")
    link.create_system = 3
    link.external_attr = 0o120777 << 16
    result = run(
        {"images/ok.png": png(), "../evil.png": png(), "/abs.png": png(), "images/../../up.png": png(), "C:/win.png": png(), "a\\b.png": png()},
        infos=[(link, b"../../../etc/passwd")],
    )
    skipped = reasons(result)
    for name in ("../evil.png", "/abs.png", "images/../../up.png", "C:/win.png", "a\\b.png"):
        assert "unsafe name" in skipped[name], name
    assert "symbolic link" in skipped["images/link.png"]
    assert result.report.images_used == 1
    assert not list(tmp_path.parent.glob("evil*")) and not Path("/abs.png").exists()


def mark_encrypted(zip_path: Path, name: str) -> None:
    """Set the "encrypted" flag of one member in its local and central headers (zipfile cannot encrypt)."""
    data = bytearray(zip_path.read_bytes())
    encoded = name.encode()
    for signature, flag_offset, name_offset in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
        start = 0
        while (start := data.find(signature, start)) != -1:
            if data[start + name_offset : start + name_offset + len(encoded)] == encoded:
                data[start + flag_offset] |= 0x1
            start += 4
    zip_path.write_bytes(bytes(data))


def test_junk_nested_zips_and_encrypted_members(tmp_path):
    zip_path = make_zip(
        tmp_path / "upload.zip",
        {"images/a.png": png(), "__MACOSX/images/._a.png": b"junk", ".DS_Store": b"junk", "images/more.zip": b"PK\x05\x06" + b"\0" * 18, "images/secret.png": png()},
    )
    mark_encrypted(zip_path, "images/secret.png")
    result = ingest(zip_path, tmp_path / "dest")
    skipped = reasons(result)
    assert "archive inside" in skipped["images/more.zip"]
    assert "encrypted" in skipped["images/secret.png"]
    assert "__MACOSX/images/._a.png" not in skipped
    assert any("2 hidden or macOS" in note for note in result.report.notes)


def test_a_member_over_the_limit_is_not_read(run):
    limits = ZipLimits(max_member_bytes=100_000)
    result = run({"a.png": png(), "big.png": b"\0" * 200_000}, limits=limits)
    assert "limit per file" in reasons(result)["big.png"]


def test_a_header_that_lies_about_sizes_is_caught_by_counting(tmp_path):
    zip_path = make_zip(tmp_path / "liar.zip", {"a.png": png(), "bomb.png": b"\0" * 3_000_000})
    data = bytearray(zip_path.read_bytes())
    # Patch the central directory entry of bomb.png to declare 1,000 bytes uncompressed.
    central = data.rfind(b"PK\x01\x02", 0, data.rfind(b"bomb.png"))
    struct.pack_into("<I", data, central + 24, 1000)
    zip_path.write_bytes(bytes(data))
    result = ingest(zip_path, tmp_path / "dest", limits=ZipLimits(max_member_bytes=100_000))
    assert "damaged" in reasons(result)["bomb.png"] or "inflates" in reasons(result)["bomb.png"]
    assert result.report.images_used == 1


def test_reading_stops_at_the_member_budget_even_if_the_header_says_little(tmp_path):
    from lora_space.train.archive import _read_bounded

    zip_path = make_zip(tmp_path / "big.zip", {"bomb.png": b"\0" * 3_000_000})
    with zipfile.ZipFile(zip_path) as archive:
        data, problem, inflated = _read_bounded(archive, archive.infolist()[0], 100_000)
    assert data is None and "inflates past" in problem and inflated == 100_001


def test_too_many_members_is_refused_before_reading(tmp_path):
    zip_path = tmp_path / "many.zip"
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as archive:
        for index in range(10_001):
            archive.writestr(f"f{index}.txt", b"")
    with pytest.raises(DatasetError, match="10,001 entries"):
        ingest(zip_path, tmp_path / "dest")


def test_the_total_budget_stops_reading_with_a_note(run):
    limits = ZipLimits(max_total_bytes=150_000, max_member_bytes=100_000)
    members = {f"{n}.png": png((n, 0, 0), (128, 128)) + b"\0" * 60_000 for n in range(5)}  # PNG ignores trailing bytes
    result = run(members, limits=limits)
    assert result.report.images_used < 5
    assert any("were not read" in note for note in result.report.notes)


# --- bad and unusual images ----------------------------------------------------------------


def bomb_png(width: int, height: int) -> bytes:
    """A small valid PNG whose header claims width x height (the pixel data is never reached)."""
    data = bytearray(png(size=(16, 16)))
    ihdr = data.index(b"IHDR")
    struct.pack_into(">II", data, ihdr + 4, width, height)
    struct.pack_into(">I", data, ihdr + 17, zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    return bytes(data)


def test_decompression_bombs_truncated_and_fake_images_are_report_entries(run):
    good = jpeg(size=(64, 64))
    noisy = io.BytesIO()
    Image.effect_noise((128, 128), 80).convert("RGB").save(noisy, format="JPEG", quality=95)
    members = {
        "ok.jpg": good,
        "bomb.png": bomb_png(9000, 9000),  # over our limit
        "huge.png": bomb_png(30000, 30000),  # over PIL's own bomb limit
        "cut.jpg": noisy.getvalue()[: len(noisy.getvalue()) * 2 // 3],
        "text.jpg": b"just some text renamed",
        "evil.svg": b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        "tiny.png": png(size=(4, 4)),
    }
    result = run(members)
    skipped = reasons(result)
    assert "decompression bomb" in skipped["bomb.png"]
    assert "decompression bomb" in skipped["huge.png"]
    assert "truncated or corrupt" in skipped["cut.jpg"]
    assert "not a readable" in skipped["text.jpg"]
    assert "not an image or caption (.svg)" in skipped["evil.svg"]
    assert "too small" in skipped["tiny.png"]
    assert result.report.images_used == 1


def saved(result, name: str) -> Image.Image:
    row = result.dataset.filter(lambda row: row["name"] == name)[0]
    image = Image.open(row["image"])
    assert image.mode == "RGB" and image.format == "PNG"
    return image


def test_images_are_normalised_to_rgb(run):
    rgba = Image.new("RGBA", (32, 32), (255, 0, 0, 0))  # fully transparent red
    palette = Image.new("P", (33, 33), 0)  # sizes differ: all four flatten to white, not duplicates
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    sixteen = Image.new("I;16", (34, 34), 65535)
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((0, 0, 255), (255, 0, 0))]
    rotated = Image.new("RGB", (40, 20), (0, 128, 0))
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise
    files = {}
    for name, image, options in [
        ("rgba.png", rgba, {}),
        ("palette.png", palette, {"transparency": 0}),
        ("sixteen.png", sixteen, {}),
        ("cmyk.jpg", Image.new("CMYK", (35, 35), (0, 0, 0, 0)), {}),
        ("anim.gif", frames[0], {"save_all": True, "append_images": frames[1:]}),
        ("rotated.jpg", rotated, {"exif": exif}),
    ]:
        buffer = io.BytesIO()
        image.save(buffer, format={"png": "PNG", "jpg": "JPEG", "gif": "GIF"}[name.rsplit(".", 1)[1]], **options)
        files[name] = buffer.getvalue()
    result = run(files)
    assert result.report.images_used == 6
    assert saved(result, "rgba").getpixel((5, 5)) == (255, 255, 255)  # alpha on white
    assert saved(result, "palette").getpixel((5, 5)) == (255, 255, 255)
    assert saved(result, "sixteen").getpixel((5, 5)) == (255, 255, 255)  # 16-bit white stays white
    assert min(saved(result, "cmyk").getpixel((5, 5))) > 240
    assert saved(result, "anim").getpixel((5, 5))[2] > 200  # the first (blue) frame
    assert any("first frame" in note for note in result.report.notes)
    assert saved(result, "rotated").size == (20, 40)


# --- captions ------------------------------------------------------------------------------


def test_captions_in_odd_encodings_and_sizes(run):
    captions = {
        "bom.txt": codecs.BOM_UTF8 + "zz, café".encode(),
        "utf16.txt": "zz, naïve über".encode("utf-16"),
        "latin.txt": "zz, crème brûlée".encode("latin-1"),
        "nul.txt": b"zz,\x00 nul\x00 bytes",
        "long.txt": b"zz " + b"word " * 200_000,  # 1 MB
        "MixedCase.txt": b"zz, case",
    }
    images = {name.replace(".txt", ".png").lower(): png((index * 30, 0, 0)) for index, name in enumerate(captions)}
    result = run(captions | images, trigger_word="zz")
    found = result.captions
    assert found["bom"] == "zz, café"
    assert found["utf16"] == "zz, naïve über"
    assert found["latin"] == "zz, crème brûlée"
    assert found["nul"] == "zz, nul bytes"
    assert len(found["long"]) == 2000
    assert found["mixedcase"] == "zz, case"
    notes = " ".join(result.report.notes)
    assert "Latin-1" in notes and "2000 characters" in notes
    assert result.report.captions_missing_trigger == []


def test_the_example_zip_is_what_its_script_writes(tmp_path):
    out = tmp_path / "again.zip"
    subprocess.run([sys.executable, str(REPO / "examples" / "make_dataset.py"), str(out)], check=True, capture_output=True)
    committed = REPO / "examples" / "flat_shapes.zip"
    assert out.read_bytes() == committed.read_bytes()
    assert committed.stat().st_size < 200_000
    result = ingest(committed, tmp_path / "dest", trigger_word="flatshape_style")
    assert (result.report.images_used, result.report.captions_matched, result.report.captions_missing_trigger) == (12, 12, [])
    assert result.zip_config["trigger_word"] == "flatshape_style"


def test_a_broken_config_json_is_refused_with_its_problem(run):
    with pytest.raises(DatasetError, match="config.json in the zip is not valid JSON"):
        run({"a.png": png(), "config.json": b'{"max_train_steps": 10,'})
    with pytest.raises(DatasetError, match="must be a JSON object"):
        run({"a.png": png(), "config.json": b"[1, 2]"})
    result = run({"a.png": png(), "config.json": codecs.BOM_UTF8 + b'{"seed": 3}'})  # Windows editors add a BOM
    assert result.zip_config == {"seed": 3}
