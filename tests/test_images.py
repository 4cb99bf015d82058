"""Image decoding, conversion and URL fetching (against a real HTTP server on loopback)."""

from __future__ import annotations

import base64
import io
import struct
import time
import zlib
from dataclasses import replace

import pytest
from PIL import Image
from url_server import UrlServer

from tenexa import fetch
from tenexa.config import load_settings
from tenexa.errors import ErrorCode, TenexaError
from tenexa.images import decode_base64, fetch_url, normalize_image, prepare_image
from tenexa.request import ImageSource

SETTINGS = load_settings({})


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def rgb(size=(40, 24)) -> Image.Image:
    return Image.new("RGB", size, (10, 200, 30))


def code(fn, *args):
    with pytest.raises(TenexaError) as info:
        fn(*args)
    assert "\n" not in info.value.message
    return info.value.code


@pytest.mark.parametrize("img,fmt", [
    (Image.new("CMYK", (20, 10), (0, 255, 0, 0)), "JPEG"),
    (Image.new("RGBA", (20, 10), (255, 0, 0, 128)), "PNG"),
    (Image.new("LA", (20, 10), (128, 200)), "PNG"),
    (Image.new("P", (20, 10), 3), "PNG"),
    (Image.new("L", (20, 10), 77), "PNG"),
    (Image.new("I;16", (20, 10), 40000), "PNG"),
    (Image.new("RGB", (20, 10), (1, 2, 3)), "WEBP"),
    (Image.new("1", (20, 10), 1), "BMP"),
])
def test_odd_but_valid_images_become_rgb_png(img, fmt):
    prepared = normalize_image(encode(img, fmt), "image_base64", SETTINGS.max_image_pixels)
    out = Image.open(io.BytesIO(prepared.png))
    assert out.format == "PNG" and out.mode == "RGB" and out.size == (20, 10) == (prepared.width, prepared.height)


def test_sixteen_bit_grey_keeps_its_brightness():
    prepared = normalize_image(encode(Image.new("I;16", (4, 4), 65535)), "f", SETTINGS.max_image_pixels)
    assert Image.open(io.BytesIO(prepared.png)).getpixel((0, 0))[0] >= 250


def test_animated_gif_uses_first_frame():
    frames = [Image.new("P", (16, 16), i) for i in range(3)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    prepared = normalize_image(data, "image_base64", SETTINGS.max_image_pixels)
    assert (prepared.width, prepared.height) == (16, 16) and prepared.source_format == "GIF"


def test_truncated_and_garbage_are_invalid_image():
    png = encode(rgb((300, 300)).effect_spread(5))
    assert code(normalize_image, png[: len(png) // 2], "f", 10**8) is ErrorCode.INVALID_IMAGE
    jpeg = encode(rgb((300, 300)).effect_spread(5), "JPEG")
    assert code(normalize_image, jpeg[: len(jpeg) // 3], "f", 10**8) is ErrorCode.INVALID_IMAGE
    assert code(normalize_image, b"%PDF-1.4 not an image", "f", 10**8) is ErrorCode.INVALID_IMAGE
    assert code(normalize_image, b"\x89PNG\r\n\x1a\n", "f", 10**8) is ErrorCode.INVALID_IMAGE


def _png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny file whose header claims a gigantic image: a decompression bomb."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b"")


def test_decompression_bomb_refused_before_decoding():
    started = time.monotonic()
    assert code(normalize_image, _png_with_declared_size(100_000, 100_000), "f", SETTINGS.max_image_pixels) is ErrorCode.IMAGE_TOO_LARGE
    assert code(normalize_image, _png_with_declared_size(8000, 6000), "f", SETTINGS.max_image_pixels) is ErrorCode.IMAGE_TOO_LARGE
    assert time.monotonic() - started < 1


def test_base64_forms():
    raw = encode(rgb())
    plain = base64.b64encode(raw).decode()
    assert decode_base64(plain, "f", 10**6) == raw
    assert decode_base64("data:image/png;base64," + plain, "f", 10**6) == raw
    assert decode_base64("\n".join(plain[i:i + 76] for i in range(0, len(plain), 76)), "f", 10**6) == raw
    assert decode_base64(base64.urlsafe_b64encode(raw).decode().rstrip("="), "f", 10**6) == raw
    assert code(decode_base64, "not base64 !!!", "f", 10**6) is ErrorCode.INVALID_IMAGE
    assert code(decode_base64, "====", "f", 10**6) is ErrorCode.INVALID_IMAGE
    assert code(decode_base64, plain, "f", 10) is ErrorCode.IMAGE_TOO_LARGE


# ------------------------------------------------------------------------------------ URL fetching


@pytest.fixture
def server():
    with UrlServer() as srv:
        yield srv.url(""), srv.routes


_send = UrlServer.body


def allow_private(**kw):
    return load_settings({"ALLOW_PRIVATE_URLS": "true", **kw})


def test_loopback_blocked_by_default(server):
    base, routes = server
    routes["/a.png"] = _send(encode(rgb()))
    assert code(fetch_url, base + "/a.png", "image_url", SETTINGS) is ErrorCode.URL_BLOCKED


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/x.png", "http://[::1]/x.png",
                                 "http://0.0.0.0/x.png", "http://[::ffff:127.0.0.1]/x.png", "http://192.168.1.1/x.png"])
def test_private_and_metadata_addresses_blocked(url):
    assert code(fetch_url, url, "image_url", SETTINGS) is ErrorCode.URL_BLOCKED


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png", "gopher://x/", "http://user:pw@example.com/a.png", "http:///nohost"])
def test_other_schemes_and_credentials_blocked(url):
    assert code(fetch_url, url, "image_url", SETTINGS) is ErrorCode.URL_BLOCKED


def test_allowed_when_configured_and_prepared(server):
    base, routes = server
    routes["/a.png"] = _send(encode(rgb((30, 20))))
    prepared = prepare_image(ImageSource("image_url", url=base + "/a.png"), allow_private())
    assert (prepared.width, prepared.height) == (30, 20)


def test_redirect_into_private_space_is_checked_at_every_hop(server, monkeypatch):
    base, routes = server
    routes["/hop"] = _send(b"", 302, {"Location": "http://169.254.169.254/latest/meta-data/"})
    real_check = fetch.check_hop
    calls = []

    def first_hop_public(url, field, policy, codes):
        calls.append(url)  # pretend only the first hop is public
        return real_check(url, field, replace(policy, allow_private=policy.allow_private or len(calls) == 1), codes)

    monkeypatch.setattr(fetch, "check_hop", first_hop_public)
    assert code(fetch_url, base + "/hop", "image_url", SETTINGS) is ErrorCode.URL_BLOCKED
    assert calls[-1].startswith("http://169.254.169.254")


def test_http_errors_size_caps_and_slow_servers(server):
    base, routes = server
    assert code(fetch_url, base + "/missing.png", "image_url", allow_private()) is ErrorCode.IMAGE_FETCH_FAILED
    routes["/big"] = _send(b"x" * 5000)
    assert code(fetch_url, base + "/big", "image_url", allow_private(MAX_IMAGE_BYTES="1000")) is ErrorCode.IMAGE_TOO_LARGE

    def undeclared_big(h):
        h.send_response(200)
        h.end_headers()
        for _ in range(50):
            h.wfile.write(b"y" * 1000)
    routes["/stream"] = undeclared_big
    assert code(fetch_url, base + "/stream", "image_url", allow_private(MAX_IMAGE_BYTES="10000")) is ErrorCode.IMAGE_TOO_LARGE

    def trickle(h):
        h.send_response(200)
        h.send_header("Content-Length", "100000")
        h.end_headers()
        try:
            for _ in range(100):
                h.wfile.write(b"z" * 10)
                h.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass
    routes["/slow"] = trickle
    started = time.monotonic()
    assert code(fetch_url, base + "/slow", "image_url", allow_private(IMAGE_URL_TIMEOUT="1")) is ErrorCode.IMAGE_FETCH_FAILED
    assert time.monotonic() - started < 4

    routes["/loop"] = _send(b"", 302, {"Location": "/loop"})
    assert code(fetch_url, base + "/loop", "image_url", allow_private()) is ErrorCode.IMAGE_FETCH_FAILED
