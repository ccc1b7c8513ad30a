"""Image readers: COCO / SBU / folder / VQA; bad images are reported and skipped, never silently dropped."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from neuronscope.errors import InputError
from neuronscope.inputs import (
    ImageRecord,
    read_coco_captions,
    read_image_folder,
    read_sbu_captions,
    read_vqa_jsonl,
)


@pytest.fixture
def images(tmp_path):
    """Folder with two good images (red, blue), one corrupt file, one text file."""
    folder = tmp_path / "img"
    folder.mkdir()
    Image.new("RGB", (4, 3), (255, 0, 0)).save(folder / "b_red.png")
    Image.new("L", (2, 2), 128).save(folder / "a_gray.JPG", format="JPEG")
    (folder / "c_broken.jpg").write_bytes(b"not an image at all")
    (folder / "notes.txt").write_text("hi")
    return folder


def test_image_folder_sorted_and_lazy_skip(images):
    data = read_image_folder(images)
    assert [r.id for r in data.records] == ["a_gray.JPG", "b_red.png", "c_broken.jpg"]
    loaded = [(record.id, image.mode, image.size) for record, image in data.iter_images()]
    assert loaded == [("a_gray.JPG", "RGB", (2, 2)), ("b_red.png", "RGB", (4, 3))]
    assert len(data.skipped) == 1
    skip = data.skipped[0]
    assert skip.record == "c_broken.jpg" and skip.reason.startswith("cannot be read as an image")
    # Iterating again neither re-reports nor re-yields the bad image.
    assert len(list(data.iter_images())) == 2 and len(data.skipped) == 1
    summary = data.summary()
    assert (summary["declared"], summary["skipped"]) == (3, 1)
    assert summary["skipped_inputs"][0]["image"] == str(images / "c_broken.jpg")


def test_image_folder_eager(images):
    data = read_image_folder(images, check="eager")
    assert [r.id for r in data.records] == ["a_gray.JPG", "b_red.png"]
    assert data.declared == 3 and [s.record for s in data.skipped] == ["c_broken.jpg"]


def test_image_folder_empty(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(InputError, match="no image files"):
        read_image_folder(tmp_path)


def test_sbu(images, tmp_path):
    path = tmp_path / "sbu.json"
    path.write_text(json.dumps([
        {"image": "img/b_red.png", "caption": "a red square"},
        {"image": "img/missing.png", "caption": "ghost"},
        {"image": str(images / "a_gray.JPG"), "caption": "grey"},
    ]))
    data = read_sbu_captions(path, check="eager")
    assert data.records == [
        ImageRecord("0", tmp_path / "img/b_red.png", ("a red square",)),
        ImageRecord("2", images / "a_gray.JPG", ("grey",)),
    ]
    assert [(s.record, s.reason) for s in data.skipped] == [("1", "image file not found")]


def test_sbu_problems(tmp_path):
    path = tmp_path / "sbu.json"
    path.write_text(json.dumps([{"image": "a.png"}, {"image": 3, "caption": "x"}, "oops"]))
    with pytest.raises(InputError) as excinfo:
        read_sbu_captions(path)
    p = str(path)
    assert str(excinfo.value).splitlines()[1:] == [
        f"{p}: record 0: field 'caption': missing; add a string",
        f"{p}: record 1: field 'image': expected a string, got number; write it in quotes",
        f"{p}: record 2: expected an object {{\"image\", \"caption\"}}, got string",
    ]


def test_all_images_missing_eager(tmp_path):
    path = tmp_path / "sbu.json"
    path.write_text(json.dumps([{"image": "a.png", "caption": "x"}]))
    with pytest.raises(InputError) as excinfo:
        read_sbu_captions(path, check="eager")
    assert str(excinfo.value).splitlines() == [(
        f"{path}: none of the 1 images can be used (first: {tmp_path / 'a.png'}: image file not found); "
        "check the image paths or pass the right image root")]


def test_coco(images, tmp_path):
    path = tmp_path / "coco.json"
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "b_red.png"}, {"id": 2, "file_name": "a_gray.JPG"},
                   {"id": 3, "file_name": "gone.png"}],
        "annotations": [{"image_id": 2, "caption": "grey"}, {"image_id": 1, "caption": "red"},
                        {"image_id": 2, "caption": "gray square"}],
    }))
    data = read_coco_captions(path, images)
    assert data.records == [
        ImageRecord("1", images / "b_red.png", ("red",)),
        ImageRecord("2", images / "a_gray.JPG", ("grey", "gray square")),
        ImageRecord("3", images / "gone.png", ()),
    ]
    assert [r.id for r, _ in data.iter_images()] == ["1", "2"]
    assert data.summary()["skipped_inputs"] == [
        {"source": str(path), "record": "3", "image": str(images / "gone.png"), "reason": "image file not found"}]


def test_coco_problems(tmp_path):
    path = tmp_path / "coco.json"
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "b.png"}, {"file_name": "c.png"},
                   {"id": 4}],
        "annotations": [{"image_id": 9, "caption": "x"}, {"caption": "y"}, {"image_id": 1, "caption": 2}],
    }))
    with pytest.raises(InputError) as excinfo:
        read_coco_captions(path)
    p = str(path)
    assert str(excinfo.value).splitlines()[1:] == [
        f"{p}: images[1]: field 'id': '1' repeats the id of images[0]; make ids unique",
        f"{p}: images[2]: field 'id': missing; add the image id that annotations refer to",
        f"{p}: images[3]: field 'file_name': missing; add a string",
        f"{p}: annotations[0]: field 'image_id': 9 is not the id of any entry in \"images\"; fix the id or add "
        "the image",
        f"{p}: annotations[1]: field 'image_id': missing; add the id of an entry in \"images\"",
        f"{p}: annotations[2]: field 'caption': expected a string, got number; write it in quotes",
    ]


def test_vqa(images, tmp_path):
    path = tmp_path / "vqa.jsonl"
    path.write_text("\n".join([
        json.dumps({"image": "b_red.png", "question": "Colour?", "answer": "red"}),
        json.dumps({"image": "c_broken.jpg", "question": "Colour?"}),
        json.dumps({"image": "a_gray.JPG", "question": "Colour?", "id": "g"}),
    ]))
    data = read_vqa_jsonl(path, images, check="eager")
    assert data.records == [
        ImageRecord("1", images / "b_red.png", (), "Colour?", "red"),
        ImageRecord("g", images / "a_gray.JPG", (), "Colour?", None),
    ]
    assert [s.record for s in data.skipped] == ["2"]


def test_vqa_problems(tmp_path):
    path = tmp_path / "vqa.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": 1}) + "\nnope\n")
    with pytest.raises(InputError) as excinfo:
        read_vqa_jsonl(path)
    p = str(path)
    assert str(excinfo.value).splitlines()[1:] == [
        f"{p}: line 1: field 'image': missing; add a string",
        f"{p}: line 1: field 'answer': expected a string, got number; write it in quotes",
        f"{p}: line 2: invalid JSON (Expecting value) at column 1; write one JSON object per line",
    ]


def test_missing_image_root(tmp_path):
    path = tmp_path / "vqa.jsonl"
    path.write_text(json.dumps({"image": "a.png", "question": "q"}))
    with pytest.raises(InputError, match="image root folder not found"):
        read_vqa_jsonl(path, tmp_path / "nowhere")
