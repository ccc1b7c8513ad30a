"""Image inputs: COCO-style and SBU-style captions, a folder of images, VQA JSONL.

Formats (relative image paths are resolved against `image_root`, by default the data file's folder):

- COCO captions JSON: `{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1,
  "caption": "a dog"}]}`: one record per image, with all its captions (possibly none).
- SBU captions JSON: `[{"image": "a.jpg", "caption": "a dog"}]`: one record per entry.
- An image folder: every file with an image extension (`IMAGE_EXTENSIONS`, any case), sorted by name.
- VQA JSONL: `{"image": "a.jpg", "question": "What animal?", "answer": "dog"}` per line; "answer" optional.

Structural problems (bad JSON, missing fields, wrong types) raise one `InputError` listing them all. A missing or
unreadable *image* is not an error: it is reported and skipped, and the skip is recorded in
`ImageDataset.skipped` (write `dataset.summary()` into the run's metrics so counts stay honest).

`check="eager"` opens every image while reading (records then hold usable images only; an error if none is
usable); `check="lazy"` (default) keeps every record and checks each image when `iter_images()` loads it.

Example:
    >>> data = read_sbu_captions("captions.json", check="eager")  # doctest: +SKIP
    >>> for record, image in data.iter_images():  # doctest: +SKIP
    ...     print(record.id, image.size, record.captions)
    >>> data.summary()["skipped"]  # doctest: +SKIP
    0
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image, UnidentifiedImageError

from neuronscope.errors import InputError
from neuronscope.inputs.problems import (
    ProblemLog,
    fail,
    get_record_id,
    get_string,
    load_json,
    load_jsonl,
    type_name,
)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
ImageCheck = Literal["lazy", "eager"]


@dataclass(frozen=True)
class ImageRecord:
    """One image input: a path (or an image in memory), reference captions (maybe none), a VQA question/answer
    and, for a textual version of the question, a ``context`` that states the answer in words.

    ``image`` holds a PIL image given in memory (then ``image_path`` is None); :meth:`load` returns the RGB
    image either way, or raises with a reason that names the file.
    """

    id: str
    image_path: Path | None = None
    captions: tuple[str, ...] = ()
    question: str | None = None
    answer: str | None = None
    image: Any = field(default=None, compare=False, repr=False)
    context: str | None = None

    @property
    def where(self) -> str:
        """The file (or "in memory"), for messages."""
        return str(self.image_path) if self.image_path is not None else f"image {self.id} (in memory)"

    def load(self) -> Image.Image:
        """The RGB image; raises :class:`InputError` naming the file and the reason when it cannot be used."""
        if self.image is not None:
            return self.image.convert("RGB")
        try:
            return load_image(self.image_path)
        except _ImageUnusable as error:
            raise InputError(f"{self.where}: {error}") from None


@dataclass(frozen=True)
class SkippedInput:
    """An input left out of the run, with the reason (goes into the run's metrics and report)."""

    source: str
    record: str
    image: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


class ImageDataset:
    """Records of one image source plus the inputs skipped so far (see the module docstring).

    Attributes:
        source: the data file or folder.
        records: eager: the records whose image opened; lazy: every record of the file.
        skipped: `SkippedInput`s, in the order they were found (each record at most once).
        declared: how many records the source declares.
    """

    def __init__(self, source: str | Path, records: list[ImageRecord], check: ImageCheck) -> None:
        if check not in ("lazy", "eager"):
            raise ValueError(f"check must be 'lazy' or 'eager', got {check!r}")
        self.source = str(source)
        self.check = check
        self.declared = len(records)
        self.skipped: list[SkippedInput] = []
        self._skipped_ids: set[str] = set()
        if check == "eager":
            usable = []
            for record in records:
                reason = image_problem(record.image_path)
                if reason is None:
                    usable.append(record)
                else:
                    self._skip(record, reason)
            if not usable:
                first = self.skipped[0]
                fail(source, f"none of the {self.declared} images can be used (first: {first.image}: "
                     f"{first.reason}); check the image paths or pass the right image root")
            records = usable
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self.records)

    def iter_images(self) -> Iterator[tuple[ImageRecord, Image.Image]]:
        """Yield `(record, RGB image)`; an image that fails to load is recorded in `skipped` and left out."""
        for record in self.records:
            if record.id in self._skipped_ids:
                continue
            try:
                image = load_image(record.image_path)
            except _ImageUnusable as error:
                self._skip(record, str(error))
                continue
            yield record, image

    def summary(self) -> dict[str, Any]:
        """Counts and skipped inputs, ready for `metrics.json`: declared, skipped, skipped_inputs."""
        return {
            "source": self.source,
            "declared": self.declared,
            "skipped": len(self.skipped),
            "skipped_inputs": [skip.to_dict() for skip in self.skipped],
        }

    def _skip(self, record: ImageRecord, reason: str) -> None:
        if record.id in self._skipped_ids:
            return
        self._skipped_ids.add(record.id)
        self.skipped.append(SkippedInput(self.source, record.id, str(record.image_path), reason))


class _ImageUnusable(Exception):
    pass


def load_image(path: str | Path) -> Image.Image:
    """Open an image fully and convert it to RGB; raises `_ImageUnusable` with a readable reason."""
    path = Path(path)
    if not path.is_file():
        raise _ImageUnusable("image file not found")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise _ImageUnusable(f"cannot be read as an image ({type(error).__name__}: {error})") from None


def image_problem(path: str | Path) -> str | None:
    """None if the image opens and decodes, else the reason it cannot be used."""
    try:
        load_image(path)
    except _ImageUnusable as error:
        return str(error)
    return None


def read_coco_captions(
    path: str | Path, image_root: str | Path | None = None, *, check: ImageCheck = "lazy"
) -> ImageDataset:
    """Read a COCO-style captions JSON (see the module docstring); one record per image, file order.

    Example:
        >>> read_coco_captions("captions_val2017.json", "val2017/")  # doctest: +SKIP
    """
    data = load_json(path)
    root = _root(path, image_root)
    log = ProblemLog(path)
    if not isinstance(data, dict):
        fail(path, f"expected a JSON object with \"images\" and \"annotations\", got {type_name(data)}")
    images = data.get("images")
    annotations = data.get("annotations", [])
    if not isinstance(images, list):
        log.add(None, "images", "missing or not a list; add [{\"id\": ..., \"file_name\": ...}, ...]")
        images = []
    elif not images:
        log.add(None, "images", "is an empty list; add at least one image")
    if not isinstance(annotations, list):
        log.add(None, "annotations", f"expected a list, got {type_name(annotations)}")
        annotations = []
    order: list[str] = []
    files: dict[str, str] = {}
    seen: dict[str, str] = {}
    for position, entry in enumerate(images):
        where = f"images[{position}]"
        if not isinstance(entry, dict):
            log.add(where, None, f"expected an object {{\"id\", \"file_name\"}}, got {type_name(entry)}")
            continue
        if "id" not in entry:
            log.add(where, "id", "missing; add the image id that annotations refer to")
            continue
        image_id = get_record_id(entry, "", where, log, seen)
        file_name = get_string(entry, "file_name", where, log)
        if image_id is None or file_name is None:
            continue
        order.append(image_id)
        files[image_id] = file_name
    captions: dict[str, list[str]] = {image_id: [] for image_id in order}
    for position, entry in enumerate(annotations):
        where = f"annotations[{position}]"
        if not isinstance(entry, dict):
            log.add(where, None, f"expected an object {{\"image_id\", \"caption\"}}, got {type_name(entry)}")
            continue
        caption = get_string(entry, "caption", where, log)
        image_id = entry.get("image_id")
        if image_id is None:
            log.add(where, "image_id", "missing; add the id of an entry in \"images\"")
            continue
        if isinstance(image_id, bool) or not isinstance(image_id, (str, int)):
            log.add(where, "image_id", f"expected a string or an integer, got {type_name(image_id)}")
            continue
        if str(image_id) not in captions:
            if str(image_id) not in seen:  # not a duplicate/invalid image entry already reported
                log.add(where, "image_id", f"{image_id!r} is not the id of any entry in \"images\"; fix the id "
                        "or add the image")
            continue
        if caption is not None:
            captions[str(image_id)].append(caption)
    log.raise_if_any()
    records = [ImageRecord(image_id, _resolve(root, files[image_id]), tuple(captions[image_id]))
               for image_id in order]
    return ImageDataset(path, records, check)


def read_sbu_captions(
    path: str | Path, image_root: str | Path | None = None, *, check: ImageCheck = "lazy"
) -> ImageDataset:
    """Read an SBU-style captions JSON list `[{"image": path, "caption": str}]`; record ids are positions.

    Example:
        >>> read_sbu_captions("sbu.json", check="eager").summary()  # doctest: +SKIP
    """
    data = load_json(path)
    root = _root(path, image_root)
    log = ProblemLog(path)
    if not isinstance(data, list):
        fail(path, f"expected a JSON list [{{\"image\": ..., \"caption\": ...}}], got {type_name(data)}")
    if not data:
        fail(path, "the list is empty; add at least one {\"image\", \"caption\"} entry")
    records = []
    for position, entry in enumerate(data):
        where = f"record {position}"
        if not isinstance(entry, dict):
            log.add(where, None, f"expected an object {{\"image\", \"caption\"}}, got {type_name(entry)}")
            continue
        image = get_string(entry, "image", where, log)
        caption = get_string(entry, "caption", where, log)
        if image is None or caption is None:
            continue
        records.append(ImageRecord(str(position), _resolve(root, image), (caption,)))
    log.raise_if_any()
    return ImageDataset(path, records, check)


def read_image_folder(
    folder: str | Path, *, check: ImageCheck = "lazy", recursive: bool = False
) -> ImageDataset:
    """Every image file (by extension, `IMAGE_EXTENSIONS`) in `folder`, sorted by relative path.

    Record ids are the paths relative to the folder ("sub/cat.png").

    Example:
        >>> read_image_folder("photos/", recursive=True)  # doctest: +SKIP
    """
    folder = Path(folder)
    if not folder.is_dir():
        fail(folder, "image folder not found (or not a folder); check the path")
    pattern = "**/*" if recursive else "*"
    files = sorted(
        (path for path in folder.glob(pattern) if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda path: path.relative_to(folder).as_posix(),
    )
    if not files:
        fail(folder, f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder"
             f"{'' if recursive else ' (sub-folders not searched; ask for recursive)'}")
    records = [ImageRecord(path.relative_to(folder).as_posix(), path) for path in files]
    return ImageDataset(folder, records, check)


def read_vqa_jsonl(
    path: str | Path, image_root: str | Path | None = None, *, check: ImageCheck = "lazy"
) -> ImageDataset:
    """Read VQA JSONL `{"image", "question", "answer"?, "context"?, "id"?}`; ids default to the line number.

    ``context`` states the answer in words (``"The circle is red."``): the question asked as text (TQA).

    Example:
        >>> read_vqa_jsonl("vqa.jsonl", "images/")  # doctest: +SKIP
    """
    log = ProblemLog(path)
    lines = load_jsonl(path, log)
    if not lines and not log.problems:
        fail(path, "the file has no records; add one JSON object per line")
    root = _root(path, image_root)
    records = []
    seen: dict[str, str] = {}
    for line_number, entry in lines:
        where = f"line {line_number}"
        problems_before = len(log)
        image = get_string(entry, "image", where, log)
        question = get_string(entry, "question", where, log)
        answer = get_string(entry, "answer", where, log, required=False)
        context = get_string(entry, "context", where, log, required=False)
        record_id = get_record_id(entry, str(line_number), where, log, seen)
        if len(log) > problems_before or image is None or question is None or record_id is None:
            continue
        records.append(ImageRecord(record_id, _resolve(root, image), (), question, answer, context=context))
    log.raise_if_any()
    return ImageDataset(path, records, check)


def _root(path: str | Path, image_root: str | Path | None) -> Path:
    root = Path(path).parent if image_root is None else Path(image_root)
    if not root.is_dir():
        fail(root, "image root folder not found; pass the folder that holds the images")
    return root


def _resolve(root: Path, image: str) -> Path:
    image_path = Path(image)
    return image_path if image_path.is_absolute() else root / image_path


def read_images(path: str | Path, image_root: str | Path | None = None) -> ImageDataset:
    """An image folder, or a captions JSON: COCO style (an object with "images") or SBU style (a list).

    Raises:
        InputError: the path does not exist, or the file is neither format.
    """
    path = Path(path)
    if path.is_dir():
        return read_image_folder(path)
    if not path.is_file():
        fail(path, "not found; give an image folder or a captions JSON (COCO or SBU style)")
    import json

    try:
        head = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        head = None
    if isinstance(head, dict):
        return read_coco_captions(path, image_root)
    return read_sbu_captions(path, image_root)


def image_records(images: Any) -> tuple[list[ImageRecord], list[dict[str, str]]]:
    """The accepted image inputs as :class:`ImageRecord`s, and the inputs already skipped.

    Accepts an :class:`ImageDataset` (its skipped records are returned as the second value), one image or path,
    or a sequence of PIL images, paths or :class:`ImageRecord`.

    Raises:
        InputError: an input of another type, or no inputs at all.
    """
    import os

    skipped: list[dict[str, str]] = []
    if isinstance(images, ImageDataset):
        skipped = [skip.to_dict() for skip in images.skipped]
        items: list[Any] = list(images.records)
    elif isinstance(images, (str, os.PathLike, Image.Image)):
        items = [images]
    else:
        items = list(images)
    records = []
    for number, item in enumerate(items):
        if isinstance(item, Image.Image):
            records.append(ImageRecord(f"image-{number}", image=item))
        elif isinstance(item, ImageRecord):
            records.append(item)
        elif isinstance(item, (str, os.PathLike)):
            records.append(ImageRecord(str(item), Path(item)))
        else:
            raise InputError(f"image {number} is a {type(item).__name__}: pass PIL images, image paths, "
                             "ImageRecords or an ImageDataset (neuronscope.inputs.images)")
    if not records and not skipped:
        raise InputError("no images given: pass at least one image")
    return records, skipped
