"""psvit.preprocessing: the timm-style eval transform, image loading and batching."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import psvit
from psvit.errors import ConfigError, DataError
from psvit.preprocessing import Preprocess, load_image, to_rgb

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_from_config_and_dict_round_trip():
    cfg = psvit.get_config("psvit_micro")
    pre = Preprocess.from_config(cfg)
    assert (pre.img_size, pre.crop_pct, pre.interpolation) == (32, 1.0, "bilinear")
    assert Preprocess.from_dict(pre.to_dict()) == pre
    assert pre.to_dict() == psvit.Checkpoint(None, cfg, None, "").preprocess  # the checkpoint's view agrees


def test_uniform_image_is_normalised_with_mean_and_std():
    pre = Preprocess(32, MEAN, STD, crop_pct=0.875, interpolation="bicubic")
    x = pre(Image.new("RGB", (40, 50), (128, 64, 255)))
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    expected = (np.array([128, 64, 255]) / 255.0 - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(x.reshape(3, -1).mean(1), expected, rtol=1e-6)
    np.testing.assert_allclose(x.reshape(3, -1).std(1), 0.0, atol=1e-6)


def test_resize_shorter_side_then_center_crop_matches_pil():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (30, 60, 3), dtype=np.uint8))  # w=60, h=30
    pre = Preprocess(32, MEAN, STD, crop_pct=0.875, interpolation="bicubic")
    assert pre.resize_size == 36
    # Shorter side 30 -> 36, longer 60 -> 72; crop 32 from the centre: left (72-32)/2=20, top (36-32)/2=2.
    manual = img.resize((72, 36), Image.Resampling.BICUBIC).crop((20, 2, 52, 34))
    np.testing.assert_array_equal(pre.to_uint8(img), np.asarray(manual).transpose(2, 0, 1))


def test_image_already_at_size_is_untouched():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    pre = Preprocess.from_config(psvit.get_config("psvit_micro"))  # crop_pct 1.0
    np.testing.assert_array_equal(pre.to_uint8(pixels), pixels.transpose(2, 0, 1))


def test_batch_of_pil_images_and_arrays():
    pre = Preprocess(16, MEAN, STD, crop_pct=1.0, interpolation="bilinear")
    gray = np.full((20, 24), 200, dtype=np.uint8)
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    batch = pre.batch([Image.new("RGB", (50, 40), "red"), gray, rgba])
    assert batch.shape == (3, 3, 16, 16) and batch.dtype == np.float32
    restored = batch[1] * np.array(STD)[:, None, None] + np.array(MEAN)[:, None, None]  # (C, H, W) in [0, 1]
    np.testing.assert_allclose(restored, 200 / 255, atol=1e-6)  # grey array -> equal RGB channels
    assert pre.batch([]).shape == (0, 3, 16, 16)


def test_bad_arrays_raise_data_error():
    pre = Preprocess(16, MEAN, STD)
    with pytest.raises(DataError, match="uint8"):
        pre.batch([np.zeros((16, 16, 3), dtype=np.float32)])
    with pytest.raises(DataError, match="HWC"):
        pre.batch([np.zeros((3, 16, 16, 2), dtype=np.uint8)])


@pytest.mark.parametrize(
    "kw, match",
    [({"crop_pct": 0.0}, "crop_pct"), ({"crop_pct": 1.5}, "crop_pct"), ({"interpolation": "cubic"}, "bicubic"),
     ({"std": (0.2, 0.0, 0.2)}, "positive"), ({"mean": (0.5, 0.5)}, "3 values")],
)
def test_invalid_settings_raise_config_error(kw, match):
    args = {"img_size": 32, "mean": MEAN, "std": STD, **kw}
    with pytest.raises(ConfigError, match=match):
        Preprocess(**args)


def test_from_dict_names_unknown_keys():
    with pytest.raises(ConfigError, match="unknown keys"):
        Preprocess.from_dict({"img_size": 32, "mean": MEAN, "std": STD, "size": 3})


@pytest.mark.parametrize("mode, colour", [("L", 77), ("P", 3), ("RGBA", (10, 20, 30, 0)), ("LA", (90, 255))])
def test_load_image_converts_to_rgb(write_image, mode, colour):
    img = load_image(write_image(f"img_{mode}.png", mode, (8, 6), colour))
    assert img.mode == "RGB" and img.size == (8, 6)
    if mode in ("L", "LA"):
        a = np.asarray(img)
        assert (a == a[..., :1]).all()  # grey: all channels equal
    if mode == "RGBA":
        assert np.asarray(img)[0, 0].tolist() == [10, 20, 30]  # alpha dropped as timm does


def test_palette_with_transparency_and_16_bit(tmp_path):
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    p.save(tmp_path / "t.png", transparency=0)
    assert np.asarray(load_image(tmp_path / "t.png"))[0, 0].tolist() == [200, 100, 50]
    deep = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert np.asarray(to_rgb(deep)).max() == 255


def test_not_an_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(DataError, match="broken.png.*not a readable image"):
        load_image(bad)
    with pytest.raises(DataError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(DataError, match="broken.png"):
        Preprocess(16, MEAN, STD).load([bad])


# ---- deeper than 8 bits: documented scaling, not clipping --------------------------------------------
RAMP = np.linspace(0.0, 1.0, 64).reshape(8, 8)  # (H, W) intensities 0..1


@pytest.mark.parametrize(
    "name, pixels",
    [
        ("float01.tif", RAMP.astype(np.float32)),  # 0..1 floats: the common float convention
        ("float255.tif", (RAMP * 255).astype(np.float32)),  # 0..255 floats: 8-bit levels
        ("gray16.png", np.rint(RAMP * 65535).astype(np.uint16)),  # 16-bit PNG (I;16)
        ("gray16.tif", np.rint(RAMP * 65535).astype(np.uint16)),  # 16-bit TIFF (I;16)
        ("int32.tif", np.rint(RAMP * 65535).astype(np.int32)),  # 32-bit integer holding 16-bit levels
    ],
)
def test_deep_images_keep_their_intensities(tmp_path, name, pixels):
    Image.fromarray(pixels).save(tmp_path / name)
    rgb = np.asarray(load_image(tmp_path / name))
    assert rgb.shape == (8, 8, 3) and (rgb == rgb[..., :1]).all()
    np.testing.assert_allclose(rgb[..., 0], RAMP * 255, atol=0.51)  # round(v * 255), never all black


def test_deep_images_without_a_known_scale_are_refused(tmp_path):
    Image.fromarray((RAMP * 2 - 1).astype(np.float32)).save(tmp_path / "signed.tif")  # -1..1
    with pytest.raises(DataError, match=r"signed.tif: a float image with values from -1 to 1 has no known scale"):
        load_image(tmp_path / "signed.tif")
    Image.fromarray(np.full((4, 4), 70000, np.int32)).save(tmp_path / "big.tif")
    with pytest.raises(DataError, match="convert it to 8- or 16-bit"):
        load_image(tmp_path / "big.tif")


def test_an_image_over_pils_pixel_limit_says_so(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels: over twice the limit, an error in PIL
    with pytest.raises(DataError, match=r"big\.png is too large to decode safely .*downscale it"):
        load_image(tmp_path / "big.png")
