"""Preprocessing: every input format and mode, polarity, centring, cleanup, empty detection, segmentation."""

from __future__ import annotations

import io
import struct
import time
import zlib
from dataclasses import FrozenInstanceError

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

from digitlab.core.errors import ImageError
from digitlab.data import clean, decode
from digitlab.data import preprocess as preprocess_module
from digitlab.data.decode import load_image, to_gray
from digitlab.data.frame import is_mnist_format
from digitlab.data.measure import ink_stats, stroke_width
from digitlab.data.preprocess import Preprocessed, naive_resize, preprocess, preprocess_array
from digitlab.data.segment import segment_digits

# -------------------------------------------------------------------------------------------- drawing helpers


def coverage(size=(140, 140), box=(40, 25, 95, 115), width=7, supersample=2) -> np.ndarray:
    """Ink coverage in [0, 1] (H, W) of a hand-drawn-looking 5: a flag, a stem and a belly.

    Drawn at `supersample` times the size and box-averaged down, so edges carry partial coverage like a
    browser canvas's anti-aliased strokes.
    """
    s = supersample
    im = Image.new("L", (size[0] * s, size[1] * s), 0)
    d = ImageDraw.Draw(im)
    x0, y0, x1, y1 = (v * s for v in box)
    w, h = x1 - x0, y1 - y0
    d.line([(x1, y0), (x0 + 0.12 * w, y0), (x0 + 0.08 * w, y0 + 0.45 * h)], fill=255, width=width * s)
    d.arc((x0, y0 + 0.33 * h, x1, y1), 215, 150, fill=255, width=width * s)
    return np.asarray(im.resize(size, Image.Resampling.BOX), np.float32) / 255


def paper(cov: np.ndarray) -> np.ndarray:
    """Dark ink on light paper, uint8."""
    return np.round(255 - 235 * cov).astype(np.uint8)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def com(img: np.ndarray) -> np.ndarray:
    return np.array(ndi.center_of_mass(img.astype(np.float64)))


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


def assert_close(a: np.ndarray, b: np.ndarray, mean_tol: float = 6.0, corr_min: float = 0.97) -> None:
    """The same digit: centred alike, and alike pixel for pixel once placed alike. Digits are placed on whole
    pixels, as MNIST's were, so two renderings of one digit may land a pixel apart."""
    assert a.shape == b.shape == (28, 28) and a.dtype == b.dtype == np.uint8
    assert np.abs(com(a) - com(b)).max() <= 1.0
    a_int = a.astype(int)
    placed = [np.roll(a_int, (dy, dx), axis=(0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]  # borders are 0
    assert min(np.abs(p - b.astype(int)).mean() for p in placed) <= mean_tol
    assert max(corr(p, b) for p in placed) >= corr_min


@pytest.fixture(scope="module")
def cov() -> np.ndarray:
    return coverage()


@pytest.fixture(scope="module")
def reference(cov) -> np.ndarray:
    """The digit from a greyscale PNG: what every other format and mode must reproduce."""
    return preprocess(encode(Image.fromarray(paper(cov)), "PNG")).image


# ------------------------------------------------------------------------------------------ formats and modes


def _as_mode(gray: np.ndarray, mode: str) -> Image.Image:
    im = Image.fromarray(gray)
    if mode == "L":
        return im
    if mode == "LA":
        return Image.merge("LA", (im, Image.new("L", im.size, 255)))
    if mode in ("RGB", "CMYK"):
        # Blue ink on cream paper, as a phone photo of a notebook would be.
        t = (255 - gray.astype(np.float32)) / 235
        rgb = np.stack([250 - 230 * t, 245 - 205 * t, 230 - 70 * t], axis=-1)
        out = Image.fromarray(np.round(rgb).astype(np.uint8))
        return out.convert("CMYK") if mode == "CMYK" else out
    if mode == "RGBA":
        # A canvas export: black ink whose alpha is its coverage over fully transparent (0,0,0,0) pixels.
        rgba = np.zeros((*gray.shape, 4), np.uint8)
        rgba[..., 3] = 255 - gray
        return Image.fromarray(rgba)
    if mode == "P":
        return im.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    if mode == "I;16":
        return Image.fromarray(gray.astype(np.uint16) * 257)  # full 16-bit range, as a scanner writes it
    raise AssertionError(mode)


@pytest.mark.parametrize(
    "fmt, mode",
    [
        ("PNG", "L"),
        ("PNG", "LA"),
        ("PNG", "RGB"),
        ("PNG", "RGBA"),
        ("PNG", "P"),
        ("PNG", "I;16"),
        ("JPEG", "L"),
        ("JPEG", "RGB"),
        ("JPEG", "CMYK"),
        ("WEBP", "RGB"),
        ("WEBP", "RGBA"),
        ("BMP", "RGB"),
        ("BMP", "P"),
        ("GIF", "P"),
        ("TIFF", "RGB"),
        ("TIFF", "I;16"),
    ],
)
def test_every_format_and_mode_gives_the_same_digit(cov, reference, fmt, mode):
    im = _as_mode(paper(cov), mode)
    data = encode(im, fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))
    assert Image.open(io.BytesIO(data)).mode == (mode if fmt != "GIF" else "P")  # the mode really was tested
    out = preprocess(data)
    assert out.status == "ok"
    assert_close(out.image, reference, mean_tol=8 if fmt in ("JPEG", "WEBP") else 4)


def adam7_png(rgb: np.ndarray) -> bytes:
    """An interlaced (Adam7) 8-bit RGB PNG, which PIL cannot write: seven passes, rows unfiltered."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    h, w = rgb.shape[:2]
    raw = b""
    passes = [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1)]
    for y0, x0, dy, dx in passes:  # (first row, first column, row step, column step)
        sub = rgb[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\0" + row.tobytes() for row in sub)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _pil_decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "RGB interlaced", "LA", "P", "I;16", "RGB + tRNS", "eXIf"])
def test_png_decoding_is_pils_whichever_decoder_runs(cov, mode, monkeypatch):
    """Plain 8-bit PNGs go through libspng (faster), the rest through PIL; either way the pixels are PIL's."""
    base = mode.split()[0] if mode != "eXIf" else "RGB"
    im = _as_mode(paper(cov), base)
    im.putpixel((3, 5), (9, 200, 30, 77)[: len(im.getbands())] if base != "P" else 7)  # an off-grey pixel
    options = {"RGB interlaced": {}, "RGB + tRNS": {"transparency": (255, 255, 255)}}.get(mode, {})
    if mode == "eXIf":
        exif = Image.Exif()
        exif[0x0112] = 1
        options = {"exif": exif}
    data = encode(im, "PNG", **options)
    if mode == "RGB interlaced":
        data = adam7_png(np.asarray(im))
        assert data[28] == 1  # IHDR's interlace method: Adam7
    plain = mode in ("L", "RGB", "RGBA", "RGB interlaced")
    calls = []
    real_load = decode.pyspng.load
    monkeypatch.setattr(decode.pyspng, "load", lambda b: calls.append(1) or real_load(b))
    got = load_image(data)
    assert bool(calls) == plain  # the fast decoder ran exactly for the plain PNGs
    want = _pil_decode(data)
    assert got.size == want.size
    if plain:
        assert got.mode == want.mode
        assert np.array_equal(np.asarray(got), np.asarray(want))
    assert np.array_equal(to_gray(got), to_gray(load_image(data)))  # and deterministic


def test_a_corrupt_png_that_libspng_rejects_is_reported_by_pil(cov):
    data = bytearray(encode(Image.fromarray(paper(cov)), "PNG"))
    data[60:80] = b"\0" * 20  # inside IDAT: zlib data destroyed
    with pytest.raises(ImageError, match="cannot decode image"):
        load_image(bytes(data))


@pytest.mark.parametrize("ink", [(0, 0, 0), (255, 255, 255), (20, 60, 200)])
@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_a_one_colour_canvas_is_shrunk_from_its_alpha_alone(cov, ink, mode):
    """A canvas export (one ink colour, coverage in alpha) takes a shortcut; it must match the general path."""
    size = (300, 260)  # bigger than the coarse pass: the shrink happens
    alpha = np.asarray(Image.fromarray(255 - paper(cov)).resize(size, Image.Resampling.BILINEAR))
    rgba = np.zeros((*alpha.shape, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = ink, alpha
    im = Image.fromarray(rgba).convert(mode)
    fast, scale, source = clean.gray_of(im, preprocess_module.COARSE_PIXELS)
    work = fast.shape[::-1]
    general = to_gray(Image.merge("LA", (im.convert("L"), im.getchannel("A"))).resize(work, Image.Resampling.BOX))
    assert source == size and scale < 1 and fast.shape == general.shape
    assert np.abs(fast - general).max() <= 1.5 / 255  # 8-bit rounding in PIL's premultiplied resize only
    blank = Image.new(mode, size, (*ink, 0) if mode == "RGBA" else (ink[0], 0))
    assert not clean.gray_of(blank, preprocess_module.COARSE_PIXELS)[0].any()  # nothing drawn: 0


def test_16bit_png_is_scaled_not_clipped(cov, reference):
    data = encode(_as_mode(paper(cov), "I;16"), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    gray = to_gray(load_image(data))
    assert 0.9 < gray.max() <= 1 and gray.min() < 0.15  # PIL's convert("L") would give all white
    assert_close(preprocess(data).image, reference, mean_tol=4)


def test_animated_gif_uses_the_first_frame(cov, reference):
    first = Image.fromarray(paper(cov)).convert("P")
    second = Image.fromarray(paper(np.roll(np.rot90(cov), 30, axis=1))).convert("P")
    data = encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert_close(preprocess(data).image, reference, mean_tol=4)


def test_exif_rotation_is_applied(cov, reference):
    exif = Image.Exif()
    exif[0x0112] = 3  # orientation: stored upside down, shown rotated by 180 degrees
    data = encode(Image.fromarray(paper(cov)).rotate(180), "JPEG", quality=95, exif=exif)
    assert_close(preprocess(data).image, reference, mean_tol=8)


def test_every_source_type_gives_the_same_digit(cov, reference, tmp_path):
    gray = paper(cov)
    png = encode(Image.fromarray(gray), "PNG")
    path = tmp_path / "digit.png"
    path.write_bytes(png)
    sources = [
        str(path),
        path,
        png,
        bytearray(png),
        io.BytesIO(png),
        Image.open(io.BytesIO(png)),  # lazy, not yet loaded
        Image.fromarray(gray),
        gray,  # uint8 HxW
        gray.astype(np.float64) / 255,  # float HxW in [0, 1]
        np.repeat(gray[..., None], 3, axis=-1),  # HxWx3
        np.dstack([np.repeat(gray[..., None], 3, axis=-1), np.full(gray.shape, 255, np.uint8)]),  # HxWx4
        np.repeat(gray[..., None], 3, axis=-1).astype(np.float32) / 255,
    ]
    for source in sources:
        out = preprocess(source)
        assert isinstance(out, Preprocessed) and out.source_size == (140, 140)
        np.testing.assert_array_equal(out.image, reference)
    assert np.array_equal(preprocess_array(gray).image, reference)
    assert np.array_equal(preprocess_array(gray.astype(np.float32) / 255).image, reference)


def test_result_is_frozen_and_read_only(reference):
    out = preprocess_array(reference)
    with pytest.raises(FrozenInstanceError):
        out.status = "empty"  # type: ignore[misc]
    with pytest.raises(ValueError):
        out.image[0, 0] = 1


# ---------------------------------------------------------------------------------- transparency and polarity


@pytest.mark.parametrize("ink", [(0, 0, 0), (255, 255, 255), (30, 60, 200)])
def test_transparent_canvas_any_ink_colour(cov, reference, ink):
    # What a browser canvas exports: untouched pixels (0,0,0,0), ink with alpha = coverage.
    alpha = np.round(cov * 255).astype(np.uint8)
    rgba = np.zeros((*cov.shape, 4), np.uint8)
    rgba[alpha > 0, :3] = ink
    rgba[..., 3] = alpha
    out = preprocess(encode(Image.fromarray(rgba), "PNG"))
    assert out.status == "ok"
    assert_close(out.image, reference, mean_tol=4)
    assert_close(out.image, preprocess_array(cov).image, mean_tol=2, corr_min=0.99)


def test_palette_image_with_transparent_background(cov, reference):
    im = Image.new("P", (cov.shape[1], cov.shape[0]), 0)
    im.putpalette([0, 0, 0, 0, 0, 0])  # both entries black: only transparency tells ink from background
    im.putdata((cov > 0.5).astype(np.uint8).ravel().tolist())
    data = encode(im, "PNG", transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P"
    assert_close(preprocess(data).image, reference, mean_tol=8, corr_min=0.95)


def test_opaque_picture_on_transparent_surround(cov, reference):
    # A photo of a card, cut out: the card has its own (light) paper, so ink must not come from alpha.
    h, w = cov.shape
    for card, ink in [(paper(cov), "dark"), (255 - paper(cov), "light")]:
        rgba = np.zeros((h + 60, w + 60, 4), np.uint8)
        rgba[30:-30, 30:-30, :3] = card[..., None]
        rgba[30:-30, 30:-30, 3] = 255
        out = preprocess(encode(Image.fromarray(rgba), "PNG"))
        assert out.status == "ok", ink
        assert_close(out.image, reference, mean_tol=4)


def test_fully_transparent_canvas_is_empty():
    out = preprocess(np.zeros((200, 300, 4), np.uint8))
    assert out.status == "empty" and not out.image.any()


def test_dark_on_light_equals_light_on_dark(cov):
    dark_on_light = preprocess(paper(cov)).image
    light_on_dark = preprocess(255 - paper(cov)).image
    assert np.abs(dark_on_light.astype(int) - light_on_dark.astype(int)).max() <= 2


def test_a_page_between_two_dark_bands_reads_as_the_page(cov):
    """A photographed page with the dark desk showing left and right: the desk is not the paper."""
    page = paper(cov).astype(np.float32)
    wide = np.full((page.shape[0], page.shape[1] + 80), 255.0, np.float32)
    wide[:, 40:-40] = page
    noise = np.random.default_rng(0).normal(0, 3, wide.shape)  # a camera's
    page_only = preprocess(np.clip(wide + noise, 0, 255).astype(np.uint8)).image
    wide[:, :30] = wide[:, -30:] = 35  # the desk, darker than the ink is light
    framed = preprocess(np.clip(wide + noise, 0, 255).astype(np.uint8)).image
    assert corr(framed, page_only) > 0.97


def test_inverted_side_strips_are_reverted(mnist):
    """MNIST digits whose outer columns are inverted (MNIST-C's stripe) frame like the digits themselves."""
    digits = mnist.test.images[:20]
    striped = digits.copy()
    striped[:, :, :7] = 255 - digits[:, :, :7]
    striped[:, :, -7:] = 255 - digits[:, :, -7:]
    for clean_digit, im in zip(digits, striped, strict=True):
        assert corr(preprocess_array(im).image, preprocess_array(clean_digit, fast=False).image) > 0.95


@pytest.mark.parametrize("transpose", [False, True])
def test_side_bands_leave_a_fat_digit_between_margins_alone(transpose):
    """Paper either side of a fat digit is the paper, not a band: the digit's median ink must not flip it."""
    g = np.zeros((40, 40), np.float32)
    g[4:36, 12:28] = 1.0  # a thick, wide stroke filling the middle columns
    g = g.T.copy() if transpose else g
    assert np.array_equal(clean.level_side_bands(g), g)


# --------------------------------------------------------------------------------------------- MNIST geometry


def test_small_off_centre_digit_is_fitted_and_centred():
    cov = coverage(size=(280, 280), box=(20, 30, 60, 95), width=6)  # 40x65 in the top-left corner
    out = preprocess(paper(cov))
    assert out.status == "ok" and out.image.dtype == np.uint8 and out.image.shape == (28, 28)
    assert np.abs(com(out.image) - 14).max() <= 1
    ys, xs = np.nonzero(out.image)
    assert abs(max(ys.max() - ys.min(), xs.max() - xs.min()) + 1 - 20) <= 1
    assert out.image.max() == 255 and out.image[0].sum() == out.image[:, 0].sum() == 0
    x0, y0, _, _ = out.stats.bbox or (-99, -99, 0, 0)
    assert abs(x0 - 20) <= 4 and abs(y0 - 30) <= 4  # in source pixels
    assert out.source_size == (280, 280)
    # The baseline squashes the whole canvas: the digit stays small and in the corner.
    naive = naive_resize(paper(cov))
    assert naive.shape == (28, 28) and naive.dtype == np.uint8
    assert np.abs(com(naive) - 14).max() > 5


def test_wide_digit_keeps_its_aspect_ratio():
    cov = coverage(size=(300, 200), box=(30, 60, 270, 140), width=8)  # 240x80: 3 times wider than tall
    ys, xs = np.nonzero(preprocess_array(cov).image)
    width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    assert abs(width - 20) <= 1 and 5 <= height <= 9


def test_mnist_digit_survives_unchanged(mnist):
    digit = mnist.test.images[0]
    assert mnist.test.labels[0] == 7
    out = preprocess(digit)
    assert out.status == "ok"
    assert corr(out.image, digit) > 0.9
    # And the pipeline is near-identity across a batch of real digits, both polarities.
    batch = mnist.test.images[:40]
    assert np.mean([corr(preprocess_array(d).image, d) for d in batch]) > 0.9
    assert np.mean([corr(preprocess_array(255 - d).image, d) for d in batch[:10]]) > 0.9


# --------------------------------------------------------------------------------------------- cleanup


LIGHTING = {
    "lamp on the left": lambda yy, xx: 1.0 - 0.45 * xx / 280 - 0.1 * yy / 280,
    "hand shadow": lambda yy, xx: 0.95 - 0.35 * np.exp(-((xx - 140) ** 2 + (yy - 180) ** 2) / (2 * 60**2)),
    "vignette": lambda yy, xx: 0.95 - 0.5 * ((xx - 140) ** 2 + (yy - 140) ** 2) / (2 * 140**2),
}


@pytest.mark.parametrize("lighting", LIGHTING)
def test_uneven_lighting_and_specks_are_cleaned(lighting):
    cov = coverage(size=(280, 280), box=(80, 50, 190, 230), width=14)
    clean = preprocess_array(1 - 0.88 * cov).image
    light = LIGHTING[lighting](*np.mgrid[0:280, 0:280])
    h, w = cov.shape
    photo = light * (0.92 - 0.80 * cov) + np.random.default_rng(0).normal(0, 0.01, (h, w))
    for y, x in [(20, 20), (250, 40), (30, 250), (240, 260), (140, 15), (120, 240)]:
        photo[y : y + 3, x : x + 3] = 0.15  # specks of dirt
    out = preprocess_array(np.clip(photo, 0, 1))
    assert out.status == "ok"
    assert np.abs(out.image.astype(int) - clean.astype(int)).mean() < 3
    assert corr(out.image, clean) > 0.98
    assert out.stats.n_components == 1  # the specks are gone


def test_broken_stroke_next_to_the_digit_is_kept():
    cov = coverage(size=(200, 200), box=(60, 40, 140, 170), width=8)
    cov[:60, 115:119] = 0  # lift the pen: the end of the flag becomes a separate, small piece
    out = preprocess_array(cov)
    assert out.stats.n_components == 2
    assert out.image[4:7, 18:22].sum() > 0  # the flag's end is still there
    # A piece of the same size far from the digit is a speck.
    cov[185:193, 5:30] = 1
    assert preprocess_array(cov).stats.n_components == 2


# --------------------------------------------------------------------------------------------- thick pens


def test_stroke_width_of_known_bars():
    for width in (2, 3, 5, 8):
        img = np.zeros((60, 60))
        img[10:50, 20 : 20 + width] = 1
        assert abs(stroke_width(img) - width) <= 0.5
    assert stroke_width(np.zeros((5, 5))) == 0


def _full_image_stroke_width(a: np.ndarray) -> float:
    """The definition, on the whole image (stroke_width itself only transforms the ink's box)."""
    mask = a >= 0.5 * a.max()
    depth = ndi.distance_transform_edt(mask)
    ridge = mask & (depth >= ndi.maximum_filter(depth, size=3))
    return float(max(2 * depth[ridge].mean() - 0.5, 0.0))


def test_stroke_width_on_the_ink_box_is_exact_also_at_the_image_edge():
    rng = np.random.default_rng(0)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(8, 60, 2))
        seeds = rng.random((h, w)) < rng.uniform(0.002, 0.03)
        a = ndi.binary_dilation(seeds, iterations=int(rng.integers(0, 5))).astype(np.float32)
        if rng.random() < 0.5:
            a[0, :] = a[:, -1] = 1  # ink touching the edge: no background beyond it
        if a.any():
            assert stroke_width(a) == _full_image_stroke_width(a)


def test_noise_level_shortcut_matches_the_medians():
    from digitlab.data.clean import _noise

    rng = np.random.default_rng(1)
    for zeros in (0.3, 0.5, 0.51, 0.9):
        r = rng.normal(0, 0.1, 101).astype(np.float32)
        r[rng.random(101) < zeros] = 0
        assert _noise(r) == pytest.approx(1.4826 * float(np.median(np.abs(r - np.median(r)))), abs=1e-12)


def test_mnist_stroke_width_is_typical(mnist):
    widths = [stroke_width(d) for d in mnist.test.images[:50]]
    assert 1.5 < np.median(widths) < 3.5


def test_thin_option_slims_fat_marker_strokes():
    cov = coverage(size=(280, 280), box=(70, 40, 200, 240), width=56)
    fat = preprocess_array(cov)
    slim = preprocess_array(cov, thin=True)
    assert fat.status == slim.status == "ok"
    assert stroke_width(fat.image) > 4.5
    assert 1.5 < stroke_width(slim.image) < 4
    assert corr(fat.image, slim.image) > 0.5  # still the same digit
    assert np.abs(com(slim.image) - 14).max() <= 1
    # Normal strokes are left alone.
    normal = coverage()
    assert np.array_equal(preprocess_array(normal, thin=True).image, preprocess_array(normal).image)


# -------------------------------------------------------------------------------------------- empty detection


def _canvas(draw) -> np.ndarray:
    im = Image.new("L", (280, 280), 0)
    draw(ImageDraw.Draw(im))
    return 255 - np.asarray(im)  # dark ink on white, like most inputs


@pytest.mark.parametrize(
    "name, image",
    [
        ("blank white", np.full((280, 280), 255, np.uint8)),
        ("blank black", np.zeros((100, 100), np.uint8)),
        (
            "grey sensor noise",
            np.clip(np.random.default_rng(1).normal(128, 6, (280, 280)), 0, 255).astype(np.uint8),
        ),
        ("single dot", _canvas(lambda d: d.ellipse((130, 130, 150, 150), fill=255))),
        ("big blob", _canvas(lambda d: d.ellipse((100, 100, 160, 170), fill=255))),
        ("thin horizontal line", _canvas(lambda d: d.line((40, 140, 240, 140), fill=255, width=2))),
        ("thick horizontal line", _canvas(lambda d: d.line((40, 140, 240, 150), fill=255, width=14))),
        ("shallow diagonal line", _canvas(lambda d: d.line((40, 200, 240, 90), fill=255, width=6))),
        ("short hairline", _canvas(lambda d: d.line((140, 100, 140, 108), fill=255, width=1))),
    ],
)
def test_near_empty_inputs_are_empty(name, image):
    out = preprocess(image)
    assert out.status == "empty" == out.stats.status, name
    assert out.stats.reason
    assert out.image.shape == (28, 28) and out.image.dtype == np.uint8


def test_a_fat_marker_digit_with_filled_loops_is_not_a_dot(mnist):
    # A 4x4 dilation fills a 6's loop: no longer than two of its stroke widths, but the size of the picture's digit
    fat = [ndi.grey_dilation(d, size=(4, 4)) for d in mnist.train.images[:200]]
    reasons = [preprocess_array(im).stats.reason for im in fat]
    assert "a single dot" not in reasons and reasons.count("") >= 198
    dot = _canvas(lambda d: d.ellipse((130, 130, 150, 150), fill=255))  # a pen tap is still a dot
    assert preprocess(dot).stats.reason == "a single dot"


def test_a_digit_in_heavy_noise_is_not_empty(mnist):
    # Noise of 80-100 grey levels a pixel: each pixel is under 6 sigmas of ink, the strokes are plain to see
    rng = np.random.default_rng(7)
    digits = mnist.train.images[:40]
    for sigma in (80, 100):
        noisy = [(d + rng.normal(0, sigma, d.shape)).clip(0, 255).astype(np.uint8) for d in digits]
        empty = [preprocess_array(im).status == "empty" for im in noisy]
        assert np.mean(empty) <= (0.05 if sigma == 80 else 0.25), sigma
    assert not clean._coherent(np.zeros((28, 28), np.float32))
    grey = rng.normal(128, 40, (10, 200, 200)).clip(0, 255).astype(np.uint8)  # noise alone, however strong
    assert all(preprocess_array(im).status == "empty" for im in grey)
    uniform = (rng.random((10, 28, 28)) * 255).astype(np.uint8)
    assert all(preprocess_array(im).status == "empty" for im in uniform)


@pytest.mark.parametrize("width", [2, 14])
def test_a_one_is_not_a_line(width):
    out = preprocess(_canvas(lambda d: d.line((140, 40, 125, 240), fill=255, width=width)))
    assert out.status == "ok", out.stats


def test_ink_stats_fields(mnist):
    stats = ink_stats(mnist.test.images[0])
    assert stats.status == "ok" and stats.reason == "" and stats.n_components >= 1
    assert 0.05 < stats.ink_fraction < 0.3
    x0, y0, x1, y1 = stats.bbox or (0, 0, 0, 0)
    assert stats.bbox_size == (x1 - x0, y1 - y0)
    assert max(stats.bbox_size) == 20 and 1 < stats.stroke_width < 4
    assert ink_stats(np.zeros((28, 28), np.uint8)).status == "empty"


# --------------------------------------------------------------------------------------------- segmentation


def _number_strip(mnist, labels: str, gap: int, zoom: int = 3) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """MNIST test digits cropped to their ink and pasted side by side; dark on light, enlarged like a scan."""
    test = mnist.test
    used: dict[int, int] = {}
    crops = []
    for ch in labels:
        d = int(ch)
        idx = np.flatnonzero(test.labels == d)[used.get(d, 0)]
        used[d] = used.get(d, 0) + 1
        img = test.images[idx]
        xs = np.nonzero(img.any(axis=0))[0]
        crops.append(img[:, xs[0] : xs[-1] + 1])
    width = sum(c.shape[1] for c in crops) + gap * (len(crops) - 1) + 20
    strip = np.zeros((28, width), np.uint8)
    spans, x = [], 10
    for c in crops:
        region = strip[:, x : x + c.shape[1]]
        np.maximum(region, c, out=region)  # a negative gap overlaps the digits' ink boxes
        spans.append((x * zoom, (x + c.shape[1]) * zoom))
        x += c.shape[1] + gap
    return 255 - np.kron(strip, np.ones((zoom, zoom), np.uint8)), spans


@pytest.mark.parametrize("gap", [8, 0, -2])
def test_segment_a_written_number(mnist, gap):
    strip, spans = _number_strip(mnist, "2026", gap)
    n_touching = 4 - ndi.label(strip < 128, structure=np.ones((3, 3)))[1]
    assert n_touching == (2 if gap < 0 else 0)  # with overlap, ink really touches: the split is exercised
    segments = segment_digits(strip)
    assert len(segments) == 4
    x0s = [box[0] for box, _ in segments]
    assert x0s == sorted(x0s)
    for (box, digit), (lo, hi) in zip(segments, spans, strict=True):
        assert lo - 3 <= (box[0] + box[2]) / 2 <= hi + 3  # each box sits on its own digit
        assert 0 <= box[1] < box[3] <= strip.shape[0] and 0 <= box[0] < box[2] <= strip.shape[1]
        assert digit.status == "ok" and digit.image.shape == (28, 28)
        assert np.abs(com(digit.image) - 14).max() <= 1
        assert digit.source_size == (box[2] - box[0], box[3] - box[1])


def test_segment_separate_digits_match_preprocess(mnist):
    strip, _ = _number_strip(mnist, "2026", 8)
    digits = mnist.test.images[[1, 3, 35, 11]]
    segments = segment_digits(strip)
    assert [corr(p.image, d) > 0.85 for (_, p), d in zip(segments, digits, strict=True)] == [True] * 4


def test_segment_merges_broken_strokes_and_drops_dots():
    im = Image.new("L", (400, 160), 255)
    d = ImageDraw.Draw(im)
    d.line([(60, 30), (60, 130)], fill=0, width=8)  # a 1
    d.line([(150, 30), (215, 30)], fill=0, width=8)  # a 7 whose bar ...
    d.line([(218, 36), (175, 130)], fill=0, width=8)  # ... does not touch its stem
    d.ellipse((250, 120, 262, 132), fill=0)  # a decimal point
    d.line([(300, 30), (300, 130)], fill=0, width=8)  # a 1
    boxes = [box for box, _ in segment_digits(im)]
    assert len(boxes) == 3
    assert boxes[1][0] < 160 and boxes[1][2] > 210  # bar and stem are one digit
    assert segment_digits(np.full((50, 200), 255, np.uint8)) == []


# --------------------------------------------------------------------------------------------- bad input


def _png_with_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims `width` x `height` (IHDR patched, CRC recomputed)."""
    png = bytearray(encode(Image.new("1", (1, 1)), "PNG"))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    png[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    png[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(png[ihdr - 4 : ihdr + 13])))
    return bytes(png)


def _bad_inputs(tmp_path):
    png = encode(Image.fromarray(paper(coverage())), "PNG")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "truncated.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "notes.png").write_text("this is not an image\n")
    (tmp_path / "bomb.png").write_bytes(_png_with_size(20_000, 20_000))
    return {
        "zero-byte file": tmp_path / "empty.png",
        "zero bytes": b"",
        "truncated png": tmp_path / "truncated.png",
        "truncated png bytes": png[:100],
        "text named .png": tmp_path / "notes.png",
        "20000x20000 header": tmp_path / "bomb.png",
        "8000x6000 header": _png_with_size(8000, 6000),  # under PIL's own limit, over ours
        "missing file": tmp_path / "missing.png",
        "path with a NUL byte": "digit\x00.png",
        "data string passed as a path": "iVBORw0KGgo" * 1000,
        "directory": tmp_path,
        "unsupported format": encode(Image.new("L", (8, 8)), "PPM"),
        "array of wrong shape": np.zeros((4, 4, 2), np.uint8),
        "float array out of range": np.full((8, 8), 255.0),
        "array with NaN": np.full((8, 8), np.nan),
        "empty array": np.zeros((0, 5)),
        "not an image at all": 42,
    }


def test_bad_inputs_raise_one_line_image_errors(tmp_path):
    for name, source in _bad_inputs(tmp_path).items():
        start = time.perf_counter()
        with pytest.raises(ImageError) as err:
            preprocess(source)
        assert time.perf_counter() - start < 1, name  # headers only: nothing big is ever decoded
        message = str(err.value)
        assert message and "\n" not in message and len(message) < 400, name
        with pytest.raises(ImageError):
            segment_digits(source)
    for width, height in [(20_000, 20_000), (8000, 6000)]:
        with pytest.raises(ImageError, match="too many pixels"):
            preprocess(_png_with_size(width, height))


def test_preprocess_array_checks_its_input():
    gray = paper(coverage())
    assert np.array_equal(preprocess_array(gray.astype(np.uint16) * 257).image, preprocess_array(gray).image)
    for bad in [gray.astype(np.float64), np.zeros((3, 4, 5)), gray.astype(np.int64), np.zeros((0, 0))]:
        with pytest.raises(ImageError):
            preprocess_array(bad)  # float 0..255 would otherwise clip to a white page


def test_pixel_limit_is_a_parameter():
    png = encode(Image.fromarray(paper(coverage())), "PNG")
    assert preprocess(png, pixel_limit=140 * 140).status == "ok"
    with pytest.raises(ImageError, match="too many pixels"):
        preprocess(png, pixel_limit=140 * 140 - 1)
    with pytest.raises(ImageError, match="too many pixels"):
        preprocess(np.zeros((200, 200), np.uint8), pixel_limit=1000)
    with pytest.raises(ImageError, match="too many pixels"):
        naive_resize(png, pixel_limit=100)


# --------------------------------------------------------------------------------------------- fast path


def _refit(digit: np.ndarray, side: int) -> np.ndarray:
    """An MNIST digit with its ink box scaled to `side` px on the longer side, centred in 28x28 (uint8)."""
    ys, xs = np.nonzero(digit)
    crop = Image.fromarray(digit[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])
    k = side / max(crop.size)
    crop = crop.resize((max(1, round(crop.width * k)), max(1, round(crop.height * k))), Image.Resampling.BILINEAR)
    out = np.zeros((28, 28), np.uint8)
    y0, x0 = (28 - crop.height) // 2, (28 - crop.width) // 2
    out[y0 : y0 + crop.height, x0 : x0 + crop.width] = np.asarray(crop)
    return out


def _general(image) -> Preprocessed:
    return preprocess(image, fast=False)


def test_mnist_format_criteria(mnist):
    digit = mnist.test.images[0]  # a 7
    assert is_mnist_format(digit) and is_mnist_format(Image.fromarray(digit))
    assert np.mean([is_mnist_format(d) for d in mnist.test.images[:500]]) >= 0.97  # 98.9% of the test set
    faint = (digit * 0.6).astype(np.uint8)
    touching = digit.copy()
    touching[27, 14] = 255
    not_mnist = {
        "off-centre by 3 px": np.roll(digit, 3, axis=1),
        "oversized: 25 px box": _refit(digit, 25),
        "undersized: 12 px box": _refit(digit, 12),
        "ink on the border": touching,
        "dark ink on white": 255 - digit,
        "faint ink": faint,
        "not 28x28": np.pad(digit, ((0, 1), (0, 0))),
        "float": digit.astype(np.float32) / 255,
        "blank": np.zeros((28, 28), np.uint8),
    }
    for name, image in not_mnist.items():
        assert not is_mnist_format(image), name
    nudged = np.roll(digit, 1 if com(digit)[1] < 14 else -1, axis=1)
    assert is_mnist_format(nudged)  # still within a pixel of the centre: taken as it is
    # Inputs that fail the criteria take the general path, which re-frames them (unlike the fast path would)
    for name in ("off-centre by 3 px", "oversized: 25 px box", "undersized: 12 px box"):
        image = not_mnist[name]
        out = preprocess(image)
        assert np.array_equal(out.image, _general(image).image) and not np.array_equal(out.image, image), name
        assert np.abs(com(out.image) - 14).max() <= 0.75, name
        ys, xs = np.nonzero(out.image)
        assert max(np.ptp(ys), np.ptp(xs)) + 1 in (19, 20, 21), name


def test_fast_path_matches_the_general_path_on_mnist_test_digits(mnist):
    n, taken, mean_abs, corrs = 300, 0, [], []
    for digit in mnist.test.images[:n]:
        data = encode(Image.fromarray(digit), "PNG")
        fast, general = preprocess(data), _general(data)
        assert fast.stats == general.stats and fast.status == general.status  # the same cleanup, measured alike
        assert fast.source_size == general.source_size == (28, 28)
        if not is_mnist_format(digit):
            assert np.array_equal(fast.image, general.image)
            continue
        taken += 1
        assert np.array_equal(fast.image, digit) and not fast.image.flags.writeable  # the digit as MNIST made it
        assert np.array_equal(preprocess_array(digit).image, digit)
        # ... and the general path's re-framing is near-identity on it: at most a pixel's shift
        assert np.abs(com(fast.image) - com(general.image)).max() <= 1.0
        mean_abs.append(np.abs(fast.image.astype(int) - general.image.astype(int)).mean())
        corrs.append(corr(fast.image, general.image))
    assert taken >= 0.97 * n
    assert np.mean(mean_abs) <= 3 and np.median(corrs) >= 0.99


def test_fast_path_keeps_the_empty_specks_and_thin_rules():
    yy, xx = np.mgrid[:28, :28]
    blob = np.where((yy - 14) ** 2 + (xx - 14) ** 2 <= 90, 255, 0).astype(np.uint8)  # a blob 19 px across
    line = np.zeros((28, 28), np.uint8)
    line[13:15, 4:24] = 255  # a horizontal bar, 20 px long
    for image, reason in ((blob, ""), (line, "a single line")):  # a digit-sized blob is for the model to judge
        assert is_mnist_format(image)
        out = preprocess(image)
        assert out.stats.reason == reason and out.stats == _general(image).stats
        assert out.status == ("empty" if reason else "ok")
    ring = np.zeros((28, 28), np.uint8)  # a "0" drawn with a fat marker: ~6 px strokes in a 19 px box
    ring[((yy - 14) ** 2 + (xx - 14) ** 2 <= 90) & ((yy - 14) ** 2 + (xx - 14) ** 2 >= 9)] = 255
    assert is_mnist_format(ring)
    assert np.array_equal(preprocess(ring).image, ring)  # not thinned unless asked
    thinned = preprocess(ring, thin=True).image
    assert np.array_equal(thinned, preprocess(ring, thin=True, fast=False).image)
    assert (thinned > 127).sum() < (ring > 127).sum()


def test_fast_path_leaves_specks_to_the_general_path(mnist):
    digit = mnist.test.images[0].copy()
    ys, xs = np.nonzero(digit)
    box = digit[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    free = ndi.binary_dilation(box > 0, structure=np.ones((5, 5), bool))  # 2 px clear of the ink
    y, x = np.argwhere(~free)[0]
    digit[ys.min() + y, xs.min() + x] = 255  # a speck inside the digit's box
    assert is_mnist_format(digit)
    out = preprocess(digit)
    assert np.array_equal(out.image, _general(digit).image)  # re-framed without the speck
    clean = preprocess(mnist.test.images[0], fast=False).stats
    assert (out.stats.n_components, out.stats.bbox) == (clean.n_components, clean.bbox)  # the speck is gone
