"""Custom workflow requests (tenexa/custom.py), transparency kept for them, and multi-file delivery."""

from __future__ import annotations

import base64
import io

import pytest
import requests
from PIL import Image
from test_delivery import BUCKET, moto_s3, settings_for  # noqa: F401 - moto_s3 is a fixture used below

from tenexa.custom import MAX_IMAGES, parse_custom, settings_report
from tenexa.delivery import deliver_files
from tenexa.errors import ErrorCode, TenexaError
from tenexa.images import normalize_image
from tenexa.request import select_mode

GRAPH = {"1": {"class_type": "SaveImage", "inputs": {}}}


def png(mode="RGB", color=(10, 20, 30), size=(16, 12), **info) -> bytes:
    buf = io.BytesIO()
    img = Image.new(mode, size, color)
    if mode == "P":
        img.putpalette([255, 0, 0, 0, 255, 0])
    img.save(buf, format="PNG", **info)
    return buf.getvalue()


B64 = base64.b64encode(png()).decode()


def test_mode_is_custom_only_for_a_graph_object():
    assert select_mode({"workflow": {"1": {}}}) == "custom"
    assert select_mode({"workflow": "wan22_i2v", "image_base64": B64}) == "generate"
    assert select_mode({"workflow": ["x"]}) == "generate"  # refused there as an unknown workflow name
    assert select_mode({"workflow": {"1": {}}, "diagnose": True}) == "diagnose"


def test_worker_comfyui_request_parses():
    req = parse_custom({"workflow": GRAPH, "images": [
        {"name": "a.png", "image": B64},
        {"name": "b.png", "image": "data:image/png;base64," + B64},
        {"name": "c.png", "url": " https://example.com/c.png "},
        {"name": "d.png", "image": "https://example.com/d.png"},
    ], "comfy_org_api_key": "x"})
    assert list(req.images) == ["a.png", "b.png", "c.png", "d.png"]
    assert req.images["a.png"].base64 == B64 and req.images["a.png"].field == "images[0]"
    assert req.images["c.png"].url == "https://example.com/c.png" and req.images["d.png"].url == "https://example.com/d.png"
    assert req.output == "base64" and req.ignored_keys == ("comfy_org_api_key",)


def test_images_may_be_absent():
    assert parse_custom({"workflow": GRAPH}).images == {}


@pytest.mark.parametrize("images, field", [
    ("input.png", "images"),
    ([["input.png", B64]], "images[0]"),
    ([{"image": B64}], "images[0].name"),
    ([{"name": "", "image": B64}], "images[0].name"),
    ([{"name": "../x.png", "image": B64}], "images[0].name"),
    ([{"name": "a\\x.png", "image": B64}], "images[0].name"),
    ([{"name": "..", "image": B64}], "images[0].name"),
    ([{"name": "a\nb.png", "image": B64}], "images[0].name"),
    ([{"name": "x" * 256, "image": B64}], "images[0].name"),
    ([{"name": "a.png"}], "images[0].image"),
    ([{"name": "a.png", "image": 5}], "images[0].image"),
    ([{"name": "a.png", "image": B64, "url": "https://example.com/a.png"}], "images[0]"),
    ([{"name": "a.png", "url": ""}], "images[0].url"),
    ([{"name": "a.png", "url": "https://x/" + "a" * 3000}], "images[0].url"),
    ([{"name": "a.png", "image": B64}, {"name": "a.png", "image": B64}], "images[1].name"),
    ([{"name": f"{i}.png", "image": B64} for i in range(MAX_IMAGES + 1)], "images"),
])
def test_bad_images_name_their_field(images, field):
    with pytest.raises(TenexaError) as info:
        parse_custom({"workflow": GRAPH, "images": images})
    assert info.value.code is ErrorCode.INVALID_INPUT and info.value.details["field"] == field


def test_output_mode_is_checked():
    with pytest.raises(TenexaError) as info:
        parse_custom({"workflow": GRAPH, "output": "s3"})
    assert info.value.details["field"] == "output"


def test_settings_report_for_diagnose():
    report = settings_report(settings_for(ALLOW_CUSTOM_WORKFLOWS="true", CUSTOM_WORKFLOW_MAX_NODES="50"))
    assert report["enabled"] is True and report["max_nodes"] == 50 and report["max_batch"] == 1024
    assert settings_report(settings_for())["enabled"] is False


# ---------------------------------------------------------------------------------------------- images


def test_alpha_is_kept_when_asked_and_only_when_present():
    rgba = normalize_image(png("RGBA", (255, 0, 0, 100)), "x", 10**6, keep_alpha=True)
    with Image.open(io.BytesIO(rgba.png)) as img:
        assert img.mode == "RGBA" and img.getpixel((0, 0)) == (255, 0, 0, 100)
    flat = normalize_image(png("RGBA", (255, 0, 0, 100)), "x", 10**6)
    with Image.open(io.BytesIO(flat.png)) as img:
        assert img.mode == "RGB"
    opaque_palette = normalize_image(png("P", 0), "x", 10**6, keep_alpha=True)
    with Image.open(io.BytesIO(opaque_palette.png)) as img:
        assert img.mode == "RGB"
    clear_palette = normalize_image(png("P", 0, transparency=0), "x", 10**6, keep_alpha=True)
    with Image.open(io.BytesIO(clear_palette.png)) as img:
        assert img.mode == "RGBA" and img.getpixel((0, 0))[3] == 0


# -------------------------------------------------------------------------------------------- delivery


def _files(tmp_path, sizes):
    out = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"{i:03d}-out.png"
        path.write_bytes(bytes([i]) * size)
        out.append((path, "image/png", f"{i:064x}"))
    return out


def test_all_files_inline_while_they_fit_together(tmp_path):
    result = deliver_files(_files(tmp_path, [1000, 2000]), job_id="j", mode="base64", settings=settings_for())
    assert result["delivery"] == "base64" and "bucket" not in result
    assert [base64.b64decode(f["data"]) for f in result["files"]] == [bytes([0]) * 1000, bytes([1]) * 2000]
    assert [f["sha256"] for f in result["files"]] == [f"{0:064x}", f"{1:064x}"]


def test_together_too_large_without_a_bucket(tmp_path):
    with pytest.raises(TenexaError) as info:
        deliver_files(_files(tmp_path, [60_000, 60_000]), job_id="j", mode="base64", settings=settings_for(MAX_RESPONSE_MB="0.2"))
    assert info.value.code is ErrorCode.OUTPUT_TOO_LARGE and "2 file(s)" in info.value.message


def test_together_too_large_go_by_url_all_of_them(moto_s3, tmp_path):  # noqa: F811
    files = _files(tmp_path, [60_000, 10])
    result = deliver_files(files, job_id="j", mode="base64", settings=settings_for(moto_s3, MAX_RESPONSE_MB="0.1"))
    assert result["delivery"] == "url" and result["bucket"] == BUCKET and "delivery_note" in result
    for (path, _, _), entry in zip(files, result["files"], strict=True):
        assert entry["type"] == "s3_url" and entry["object_key"].endswith(path.name)
        got = requests.get(entry["data"], timeout=10)
        assert got.content == path.read_bytes() and got.headers["content-type"] == "image/png"
