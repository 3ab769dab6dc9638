"""The API's input: one image or several, as multipart files, base64 JSON or a raw body; their media types."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from digitlab.serving.errors import ApiError, InvalidRequest, UnsupportedMediaType, one_line
from digitlab.serving.schemas import ImageJson

# Declared media types of images we decode (the decoder sniffs the bytes anyway; these only guard the door).
# Declared media types of images we decode (the decoder sniffs the bytes anyway; these only guard the door).
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/bmp", "image/gif", "image/tiff")
IMAGE_TYPE_ALIASES = {"image/jpg", "image/pjpeg", "image/mpo", "image/x-bmp", "image/x-ms-bmp", "image/x-tiff"}
RAW_TYPES = (*IMAGE_TYPES, "application/octet-stream")


@dataclass(frozen=True)
class Upload:
    """A request's image before decoding: raw bytes, or a JSON body still to parse (in the worker thread)."""

    data: bytes
    is_json: bool = False
    filename: str | None = None
    content_type: str | None = None


def media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def check_image_type(media_type: str) -> None:
    """415 for a declared image type we do not decode (SVG, HEIC, ...); non-image types are sniffed instead."""
    if media_type.startswith("image/") and media_type not in IMAGE_TYPES and media_type not in IMAGE_TYPE_ALIASES:
        raise UnsupportedMediaType(f"{media_type} is not supported (send PNG, JPEG, WebP, BMP, GIF or TIFF)")


def _image_from_json(body: bytes) -> bytes:
    try:
        obj = json.loads(body)
    except RecursionError:  # [[[[...]]]]: nested deeper than the parser goes
        raise InvalidRequest("body is not valid JSON (nested too deeply)") from None
    except ValueError as e:
        raise InvalidRequest(f"body is not valid JSON ({one_line(e)})") from None
    try:
        text = ImageJson.model_validate(obj).image
    except ValidationError as e:
        where = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors())
        raise InvalidRequest(f'expected {{"image": "<base64>"}}: {where}') from None
    return image_from_text(text)


def image_from_text(text: str) -> bytes:
    """The bytes of a JSON body's image: base64 (standard or URL-safe alphabet) or a data: URL."""
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or not header.endswith(";base64"):
            raise InvalidRequest("a data: URL must be base64 (data:image/png;base64,...)")
        check_image_type(media_type(header[5:]))
    text = "".join(text.split())
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_" if "-" in text or "_" in text else None,
                                validate=True)  # fmt: skip
    except (binascii.Error, ValueError):
        raise InvalidRequest("'image' is not valid base64") from None


def image_data(upload: Upload) -> bytes:
    return _image_from_json(upload.data) if upload.is_json else upload.data


async def parse_multipart(request: Request, max_files: int, too_many: Callable[[], ApiError]) -> list[UploadFile]:
    parser = MultiPartParser(request.headers, request.stream(), max_files=max_files, max_fields=32,
                             max_part_size=64 * 1024)  # fmt: skip
    try:
        form = await parser.parse()
    except MultiPartException as e:
        if e.message.startswith("Too many files"):
            raise too_many() from None
        raise InvalidRequest(f"malformed multipart body: {e.message}") from None
    return [v for _, v in form.multi_items() if isinstance(v, UploadFile)]


async def read_files(files: list[UploadFile]) -> list[Upload]:
    try:
        return [Upload(await f.read(), filename=f.filename, content_type=media_type(f.content_type)) for f in files]
    finally:
        for f in files:
            await f.close()


async def read_image(request: Request) -> Upload:
    """The one image of /v1/predict and /v1/read: multipart field `file`, a JSON body or a raw image body."""
    kind = media_type(request.headers.get("content-type"))
    if kind == "multipart/form-data":
        files = await parse_multipart(
            request, 1, lambda: InvalidRequest("send one file (use /v1/predict/batch for several)")
        )
        uploads = await read_files(files)
        if not uploads:
            raise InvalidRequest("no file in the multipart body: send the image as the file field 'file'")
        check_image_type(uploads[0].content_type or "")
        return uploads[0]
    if kind == "application/json":
        return Upload(await request.body(), is_json=True)
    if kind in RAW_TYPES or kind in IMAGE_TYPE_ALIASES:
        return Upload(await request.body(), content_type=kind)
    check_image_type(kind)
    shown = kind or "no Content-Type"
    raise UnsupportedMediaType(f"{shown}: send multipart/form-data, application/json or an image/* body")


def binary_schema(description: str) -> dict[str, Any]:
    return {"type": "string", "format": "binary", "description": description}


def image_body(example_b64: str) -> dict[str, Any]:
    """OpenAPI requestBody of /v1/predict and /v1/read: three ways to send one image."""
    json_schema = ImageJson.model_json_schema()
    content: dict[str, Any] = {
        "multipart/form-data": {
            "schema": {"type": "object", "required": ["file"],
                       "properties": {"file": binary_schema("The image file (PNG, JPEG, WebP, BMP, GIF or TIFF).")}},
            "encoding": {"file": {"contentType": ", ".join(IMAGE_TYPES)}},
        },
        "application/json": {"schema": json_schema, "example": {"image": example_b64}},
        **{t: {"schema": binary_schema("The image file itself.")} for t in RAW_TYPES},
    }  # fmt: skip
    return {"requestBody": {"required": True, "content": content}}


def batch_body(max_batch: int) -> dict[str, Any]:
    files = {"type": "array", "items": binary_schema("One image file."), "minItems": 1, "maxItems": max_batch,
             "description": f"Up to {max_batch} image files, each as a part named 'files'."}  # fmt: skip
    schema = {"type": "object", "required": ["files"], "properties": {"files": files}}
    content = {"multipart/form-data": {"schema": schema,
                                       "encoding": {"files": {"contentType": ", ".join(IMAGE_TYPES)}}}}  # fmt: skip
    return {"requestBody": {"required": True, "content": content}}
