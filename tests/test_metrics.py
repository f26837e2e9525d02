import numpy as np
import pytest
import scipy.linalg
import torch

from raygan.data import load_dataset, to_unit_range
from raygan.demo_domains import make_domain, paint_fills
from raygan.errors import ConfigError
from raygan.metrics.evaluate import Evaluator, color_moments, objective
from raygan.metrics.features import build_extractor, cache_dir


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The reference formula (Heusel et al. 2017) with scipy's sqrtm, not torchmetrics."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@pytest.fixture(scope="module")
def target():
    return load_dataset("demo:target:400", 32)


@pytest.fixture(scope="module")
def evaluator(target):
    return Evaluator(target, num_samples=400)


def features_fid(evaluator, fake_features):
    evaluator.fid.reset()
    evaluator.fid.update(fake_features.double(), real=False)
    return float(evaluator.fid.compute())


def test_fid_of_identical_sets_is_zero(evaluator, target):
    result = evaluator.score_images(*target.batch(torch.arange(len(target))))
    assert abs(result.fid) < 1e-3 * max(1.0, float(evaluator.real_features.var(0).sum()))
    assert abs(result.color_fd) < 1e-6


def test_fid_agrees_with_scipy_sqrtm_formula(evaluator):
    gen = torch.Generator().manual_seed(0)
    real = evaluator.real_features
    fake = real[torch.randperm(len(real), generator=gen)[:300]] * 1.3 + 0.5
    ours = features_fid(evaluator, fake)
    reference = scipy_fid(real.double().numpy(), fake.double().numpy())
    assert ours == pytest.approx(reference, rel=1e-3)
    assert reference > 1.0


def test_collapsed_generator_scores_high_collapse_and_held_out_real_scores_low(evaluator, target):
    held_out = load_dataset("demo:target:400", 32)  # same domain, other draws below
    images, labels = make_domain("target", 400, seed=99, resolution=32)
    held_out.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    held_out.labels = torch.from_numpy(labels).long()
    real_score = evaluator.score_images(*held_out.batch(torch.arange(400)))

    # One image per class, repeated: the generator has dropped every mode but one per class.
    fake_labels = torch.arange(400) % 10
    firsts = torch.tensor([int((target.labels == c).nonzero()[0]) for c in range(10)])
    collapsed, _ = target.batch(firsts[fake_labels])
    collapsed_score = evaluator.score_images(collapsed, fake_labels)

    assert real_score.collapse < 0.15, real_score
    assert collapsed_score.collapse > 0.8, collapsed_score
    assert collapsed_score.fid > real_score.fid
    assert real_score.class_accuracy > 0.8


def held_out_and_one_colour(evaluator):
    """Held-out real target images, and the same images with every fill one colour."""
    images, labels = make_domain("target", 400, seed=99, resolution=32)
    labels = torch.from_numpy(labels)

    def score(pictures):
        images = to_unit_range(torch.from_numpy(pictures).permute(0, 3, 1, 2))
        return evaluator.score_images(images, labels)

    return score(images), score(paint_fills(images, (230, 40, 45)))


def test_color_fd_rises_when_the_generator_draws_one_colour(evaluator):
    real, one_colour = held_out_and_one_colour(evaluator)
    assert one_colour.color_fd > 20 * real.color_fd, (real, one_colour)


def test_the_feature_scores_barely_see_one_colour(evaluator):
    """What color_fd is for (README, Scores): the classifier's features miss colour."""
    _, one_colour = held_out_and_one_colour(evaluator)
    assert one_colour.collapse < 0.15 and one_colour.class_accuracy > 0.8, one_colour


def test_color_moments_are_each_channels_mean_and_spread():
    image = torch.tensor([[[[0.0, 1.0]], [[0.5, 0.5]], [[-1.0, 1.0]]]])  # (1, 3, 1, 2)
    expected = [0.5, 0.5, 0.0, 0.5**0.5, 0.0, 2**0.5]
    assert color_moments(image)[0].tolist() == pytest.approx(expected)


def test_objective_penalises_collapse():
    assert objective(10.0, 0.0) == 10.0
    assert objective(10.0, 1.0) == 20.0


def test_missing_inception_weights_is_a_clear_error(target, monkeypatch):
    monkeypatch.delenv("RAYGAN_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(ConfigError, match="Inception-v3 FID weights not found"):
        build_extractor("inception", target, classifier=None)
    assert not (cache_dir() / "pt_inception-2015-12-05-6726825d.pth").exists()


def test_unsafe_inception_weights_are_refused(target, tmp_path, monkeypatch):
    import pickle

    class Payload:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pickle ran')",))

    file = tmp_path / "weights.pth"
    file.write_bytes(pickle.dumps(Payload()))
    monkeypatch.setenv("RAYGAN_INCEPTION_WEIGHTS", str(file))
    with pytest.raises(ConfigError, match="cannot load Inception weights safely"):
        build_extractor("inception", target, classifier=None)


def test_unknown_extractor_is_a_config_error(target):
    with pytest.raises(ConfigError, match="unknown feature_extractor 'clip'"):
        build_extractor("clip", target, classifier=None)


def test_real_features_are_computed_once_and_cached(target, evaluator):
    files = list(cache_dir().glob("real-features-classifier-*.safetensors"))
    assert len(files) >= 1
    assert list(cache_dir().glob("real-colors-*.safetensors"))
    again = Evaluator(target, num_samples=400)
    assert torch.equal(again.real_features, evaluator.real_features)
