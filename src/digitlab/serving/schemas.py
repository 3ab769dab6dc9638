"""The API's request and response models: the contract, as /docs shows it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Probability = Field(ge=0.0, le=1.0)


class PredictionOut(BaseModel):
    """One image's answer."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"digit": 7, "confidence": 0.993, "status": "ok", "message": None,
                                         "probabilities": [0.0, 0.0, 0.001, 0.002, 0.0, 0.0, 0.0, 0.993, 0.001, 0.003],
                                         "model": "fast"}]}
    )  # fmt: skip
    digit: int | None = Field(ge=0, le=9, description="The digit; null unless status is 'ok'.")
    confidence: float = Field(ge=0.0, le=1.0, description="Calibrated probability of `digit` (0 when null).")
    probabilities: list[float] = Field(
        max_length=10, description="The 10 calibrated class probabilities (digits 0-9) of the framed image, "
        "refused ones included (status 'ok', 'empty' or 'not_a_digit')."
    )  # fmt: skip
    status: Literal["ok", "empty", "not_a_digit"] = Field(
        description="'ok'; 'empty' (no digit-like ink); 'not_a_digit' (rejected by the run's out-of-distribution rule)."
    )
    message: str | None = Field(description="Why status is not 'ok', in one line.")
    model: str = Field(description="Run id of the model that answered.")


class BatchItemError(BaseModel):
    code: str = Field(description="invalid_image, too_many_pixels or unsupported_media_type.")
    message: str


class BatchItem(BaseModel):
    """One file's answer in a batch, in request order; a bad file gets status 'error' here, not a failed request."""

    index: int = Field(ge=0, description="Position of the file in the request.")
    filename: str | None = Field(description="The part's filename, as sent.")
    digit: int | None = Field(ge=0, le=9)
    confidence: float = Field(ge=0.0, le=1.0)
    probabilities: list[float] = Field(max_length=10)
    status: Literal["ok", "empty", "not_a_digit", "error"]
    message: str | None
    error: BatchItemError | None = Field(description="Set when status is 'error'.")


class BatchOut(BaseModel):
    model: str
    count: int = Field(ge=0)
    results: list[BatchItem]


class ReadDigitOut(BaseModel):
    box: list[int] = Field(min_length=4, max_length=4, description="(x0, y0, x1, y1) in source pixels.")
    digit: int | None = Field(ge=0, le=9)
    confidence: float = Field(ge=0.0, le=1.0)
    probabilities: list[float] = Field(max_length=10)
    status: Literal["ok", "empty", "not_a_digit"]
    message: str | None


class ReadOut(BaseModel):
    """A number written on one line, read left to right."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"text": "42", "status": "ok", "message": None, "model": "fast", "digits": [
            {"box": [10, 8, 52, 70], "digit": 4, "confidence": 0.98, "status": "ok", "message": None,
             "probabilities": [0.0, 0.0, 0.0, 0.0, 0.98, 0.0, 0.0, 0.01, 0.0, 0.01]},
            {"box": [60, 9, 101, 71], "digit": 2, "confidence": 0.99, "status": "ok", "message": None,
             "probabilities": [0.0, 0.0, 0.99, 0.0, 0.0, 0.0, 0.0, 0.01, 0.0, 0.0]}]}]}
    )  # fmt: skip
    text: str = Field(description="One character per digit, '?' where a mark is not a digit.")
    status: Literal["ok", "empty"]
    message: str | None
    digits: list[ReadDigitOut]
    model: str


class OodOut(BaseModel):
    score: str = Field(description="Score the 'not a digit' rule thresholds (energy or max_logit).")
    threshold: float
    temperature: float
    ink_max: float | None = Field(description="Bright-ink share above which an image is 'not a digit'.")


class CalibrationOut(BaseModel):
    temperature: float = Field(gt=0, description="Softmax temperature fitted on the validation split.")
    ece: float | None = Field(description="Validation expected calibration error after scaling.")
    nll: float | None = Field(description="Validation negative log-likelihood after scaling.")
    fitted_on: str | None
    ood: OodOut | None = Field(description="The 'not a digit' rule (null: none fitted).")


class ModelOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"run": "fast", "preset": "fast", "architecture": "fast", "params": 160842,
                                         "test_accuracy": 0.9962, "backend": "onnx", "tta": False, "device": "cpu",
                                         "calibration": {"temperature": 1.21, "ece": 0.004, "nll": 0.012,
                                                         "fitted_on": "validation split", "ood": None}}]}
    )  # fmt: skip
    run: str
    preset: str | None
    architecture: str | None
    params: int | None
    test_accuracy: float | None
    backend: str
    tta: bool = Field(description="Predictions average 5 shifted copies (test-time augmentation).")
    device: str
    calibration: CalibrationOut
    created: str | None = Field(None, description="When the model file served was written (UTC, ISO 8601).")
    checkpoint_sha256: str | None = Field(None, description="SHA-256 of the model file served (as the backend).")


class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadyOut(BaseModel):
    status: Literal["ready"]
    model: str
    backend: str


class ImageJson(BaseModel):
    """An image as base64 in JSON (a `data:` URL, as a browser canvas gives, is accepted too)."""

    model_config = ConfigDict(extra="forbid")
    image: str = Field(
        min_length=1,
        description="Base64 of a PNG, JPEG, WebP, BMP, GIF or TIFF file (or a data:image/...;base64, URL).",
        json_schema_extra={"contentEncoding": "base64"},
    )
