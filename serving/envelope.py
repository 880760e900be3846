"""The response envelope of the product's API (SPEC.md, "POST /autotable/predict") and its error type."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field


class ApiError(Exception):
    """An error the client gets as `{"code": code, "msg": msg, "data": []}` with HTTP status `code`."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


def envelope(code: int = 200, msg: str = "ok", data: list[Any] | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "msg": msg, "data": data if data is not None else []}, status_code=code)


def prediction(cls: str, probability: float, need_visual_data: bool, need_visual_result: bool) -> dict[str, Any]:
    """One entry of `data`: top-1 class and its probability with 4 decimals, plus the visual keys asked for."""
    prob = f"{probability:.4f}"
    item: dict[str, Any] = {"infer_data": [cls, prob]}
    if need_visual_data:
        item["visual_data"] = {"output_type": "text", "annotation_type": None, "data": f"{cls}_{prob}"}
    if need_visual_result:
        item["visual_result"] = f"{cls}_{prob}"
    return item


# OpenAPI schema only: the routes build their JSON by hand so that unrequested keys are left out, not null.
class VisualData(BaseModel):
    output_type: str = Field("text", examples=["text"])
    annotation_type: None = None
    data: str = Field(examples=["daisy_0.5575"])


class Prediction(BaseModel):
    infer_data: tuple[str, str] = Field(description="[top-1 class, its softmax probability with 4 decimals]")
    visual_data: VisualData | None = Field(None, description="left out when need_visual_data is false")
    visual_result: str | None = Field(None, description="left out when need_visual_result is false")


class Envelope(BaseModel):
    code: int = Field(examples=[200])
    msg: str = Field(examples=["ok"])
    data: list[Prediction] = Field(description="one entry per image, in request order; [] on errors")


class PredictRequest(BaseModel):
    content: str | list[str] = Field(
        description="base64 (standard or URL-safe, padding optional, data:image/...;base64, prefix allowed) of "
        "an image file's bytes, or a list of them; in multipart bodies the image file itself"
    )
    need_visual_data: bool = True
    need_visual_result: bool = True
