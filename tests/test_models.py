"""Model shapes and parameter counts; augmentation bounds and geometry."""

import pytest
import torch

from digitlab.core.errors import ConfigError
from digitlab.model.forward import fold_batchnorm, predict_logits, predict_logits_pair
from digitlab.model.networks import build_model, count_params
from digitlab.model.tta import shift_batch
from digitlab.training.augment import (
    apply_affine,
    elastic_offsets,
    random_affine,
    resize_for_epoch,
    sample_affine,
    thicken_strokes,
)


@pytest.mark.parametrize(("padding", "params"), [("valid", 537_386), ("same", 3_486_506)])
def test_seed_model_matches_the_reference_layer_list(padding, params):
    model = build_model("seed", padding=padding).eval()
    assert count_params(model) == params
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_fast_model_outputs_logits_for_any_batch():
    model = build_model("fast").eval()
    for n in (1, 7):
        assert model(torch.rand(n, 1, 28, 28)).shape == (n, 10)


def test_fast_model_stride_stem_has_no_28x28_feature_map():
    model = build_model("fast", widths=[16, 32, 64], stem="stride").eval()
    sides = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda mod, i, o: sides.append(o.shape[-1]))
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert sides == [14, 14, 7, 7]
    assert count_params(model) < count_params(build_model("fast", widths=[16, 32, 64]))
    with pytest.raises(ConfigError, match="stem"):
        build_model("fast", stem="patchify")


def test_progressive_resizing_shrinks_early_epochs_and_keeps_the_last_side():
    x = torch.zeros(3, 1, 28, 28)
    x[:, :, 8:20, 12:16] = 1
    sizes = [16, 20, 28]
    assert resize_for_epoch(x, sizes, 0).shape == (3, 1, 16, 16)
    assert resize_for_epoch(x, sizes, 1).shape == (3, 1, 20, 20)
    assert resize_for_epoch(x, sizes, 2) is x and resize_for_epoch(x, sizes, 7) is x  # the last entry repeats
    assert resize_for_epoch(x, [], 0) is x
    for side in (14, 16, 20, 24):  # anti-aliased: the ink's share of the image is kept, strokes not bolded
        assert abs(resize_for_epoch(x, [side], 0).mean().item() - x.mean().item()) < 0.02 * x.mean().item()


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_predict_logits_gives_the_model_back_in_its_own_layout_with_the_same_logits(layout):
    torch.manual_seed(0)
    model = build_model("fast").eval()
    images = torch.randint(0, 256, (40, 28, 28), dtype=torch.uint8).numpy()
    with torch.no_grad():
        plain = model(torch.from_numpy(images).unsqueeze(1).float().div(255)).numpy()
    model.to(memory_format=layout)
    logits = predict_logits(model, images, batch_size=16)
    assert abs(logits - plain).max() < 1e-4
    conv = next(p for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1)
    assert conv.is_contiguous(memory_format=layout) and conv.is_contiguous() == (layout == torch.contiguous_format)


def test_predict_logits_pair_is_the_tta_mean_and_the_unshifted_view():
    torch.manual_seed(0)
    model = build_model("fast").eval()
    images = torch.randint(0, 256, (40, 28, 28), dtype=torch.uint8).numpy()
    with_tta, plain = predict_logits_pair(model, images, batch_size=16)
    assert abs(with_tta - predict_logits(model, images, tta=True)).max() < 1e-5
    assert abs(plain - predict_logits(model, images)).max() < 1e-5
    assert abs(with_tta - plain).max() > 0.01 * abs(plain).max()  # the shifts change the logits: not one array twice
    empty = predict_logits_pair(model, images[:0])
    assert empty[0].shape == empty[1].shape == (0, 10)


@pytest.mark.parametrize("name", ["fast", "strided", "seed"])
def test_folding_batchnorm_keeps_the_logits_and_leaves_the_model_alone(name):
    torch.manual_seed(0)
    model = build_model(name)
    with torch.no_grad():  # BatchNorm statistics unlike a fresh layer's, so folding has something to fold
        model.train()
        model(torch.rand(64, 1, 28, 28))
    model.eval()
    x = torch.rand(16, 1, 28, 28)
    folded = fold_batchnorm(model)
    with torch.no_grad():
        assert abs(folded(x) - model(x)).max() < 1e-4 * (1 + abs(model(x)).max())
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    left = [m for m in folded.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and (len(left) < len(bns) if name != "seed" else folded is model)  # seed: ReLU sits between


def test_unknown_model_lists_valid_names():
    with pytest.raises(ConfigError, match="seed"):
        build_model("resnet9000")


def test_augmentation_parameters_stay_within_bounds():
    g = torch.Generator().manual_seed(0)
    p = sample_affine(20_000, rotate=10, zoom=0.1, translate=0.1, generator=g)
    assert p.angle.abs().max() <= 10 and p.angle.abs().max() > 9.9
    assert (p.scale >= 0.9).all() and (p.scale <= 1.1).all()
    assert p.shift.abs().max() <= 0.1
    # uniform: the mean is near 0 and the spread is that of U(-a, a) (std a/sqrt(3))
    assert abs(p.angle.mean()) < 0.2 and abs(p.angle.std() - 10 / 3**0.5) < 0.1


def centre_of_mass(x: torch.Tensor) -> tuple[float, float]:
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    w = x.sum()
    return float((x * xs).sum() / w), float((x * ys).sum() / w)


def test_translation_moves_ink_by_the_requested_fraction():
    x = torch.zeros(1, 1, 28, 28)
    x[..., 10:18, 10:18] = 1
    p = sample_affine(1, 0, 0, 0)
    p = type(p)(angle=p.angle, scale=p.scale, shift=torch.tensor([[0.1, -0.1]]))
    cx, cy = centre_of_mass(apply_affine(x, p)[0, 0])
    assert abs(cx - (13.5 + 2.8)) < 0.3 and abs(cy - (13.5 - 2.8)) < 0.3


def test_zoom_in_enlarges_ink_and_identity_keeps_the_image():
    x = torch.zeros(1, 1, 28, 28)
    x[..., 10:18, 10:18] = 1
    ident = sample_affine(1, 0, 0, 0)
    assert torch.allclose(apply_affine(x, ident), x, atol=1e-5)
    bigger = type(ident)(angle=ident.angle, scale=torch.tensor([1.1]), shift=ident.shift)
    assert apply_affine(x, bigger).sum() > x.sum() * 1.15


def test_random_affine_is_seeded_and_per_sample():
    x = torch.rand(8, 1, 28, 28)
    a = random_affine(x, 10, 0.1, 0.1, torch.Generator().manual_seed(1))
    b = random_affine(x, 10, 0.1, 0.1, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    x_same = x[:1].expand(8, -1, -1, -1)
    out = random_affine(x_same, 10, 0.1, 0.1, torch.Generator().manual_seed(2))
    assert not torch.allclose(out[0], out[1])  # each sample gets its own transform


def test_shift_batch_moves_by_whole_pixels():
    x = torch.zeros(1, 1, 28, 28)
    x[..., 5, 5] = 1
    assert shift_batch(x, 2, -1)[0, 0, 4, 7] == 1


def test_elastic_field_is_smooth_seeded_and_sized_like_simards():
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a, b = elastic_offsets(500, 28, 28, 34, 4, g()), elastic_offsets(500, 28, 28, 34, 4, g())
    assert a.shape == (500, 28, 28, 2) and torch.equal(a, b)
    px = a * 14  # affine_grid units -> pixels on a 28-pixel side
    assert 0.9 < px.std().item() < 1.6 and abs(px.mean().item()) < 0.05
    # smooth: neighbouring pixels move together, far more than independent noise would
    assert torch.corrcoef(torch.stack([px[:, 10, 10, 0], px[:, 10, 11, 0]]))[0, 1] > 0.9
    assert torch.equal(elastic_offsets(2, 28, 28, 0, 4), torch.zeros(2, 28, 28, 2))


def test_elastic_distortion_moves_ink_but_keeps_it():
    x = torch.zeros(8, 1, 28, 28)
    x[:, :, 6:22, 12:16] = 1
    y = random_affine(x, 0, 0, 0, torch.Generator().manual_seed(0), elastic=34)
    assert (y - x).abs().sum() > 0.05 * x.sum()
    assert abs(y.sum().item() - x.sum().item()) < 0.1 * x.sum().item()


def test_thicken_strokes_fattens_a_share_of_the_batch_and_never_removes_ink():
    x = torch.zeros(400, 1, 28, 28)
    x[:, :, 6:22, 13:15] = 1  # a 2-pixel-wide stroke, as MNIST's
    assert torch.equal(thicken_strokes(x, 0.0), x)
    y = thicken_strokes(x, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(y, thicken_strokes(x, 0.5, torch.Generator().manual_seed(0)))
    assert (y >= x).all() and (y <= 1).all()
    grown = (y - x).flatten(1).sum(1) > 0
    assert 0.35 < grown.float().mean().item() < 0.65  # about half the images, the rest untouched
    assert (y - x).flatten(1).sum(1).max() > 0.8 * 2 * 18  # up to a pixel more on each side of the stroke


def test_thicken_strokes_reach_two_grows_up_to_two_pixels_a_side_and_no_further():
    x = torch.zeros(400, 1, 28, 28)
    x[:, :, 6:22, 13:15] = 1
    y = thicken_strokes(x, 1.0, torch.Generator().manual_seed(0), reach=2.0)
    width = (y[:, 0, 14] > 0).sum(1)  # ink pixels across the middle row
    assert width.max() == 2 + 2 * 2 and width.min() >= 2
    assert (width > 4).float().mean() > 0.3  # past the 3x3 dilation for the larger half of the draws
    assert torch.equal(thicken_strokes(x, 1.0, torch.Generator().manual_seed(0)),
                       thicken_strokes(x, 1.0, torch.Generator().manual_seed(0), reach=1.0))  # fmt: skip
