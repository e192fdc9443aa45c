"""FID on known inputs, with the pinned Inception weights through clean-fid's resize and feature loop,
scored as the pipeline scores it (pipeline.evaluation.quality.Frechet; test_quality holds that equal to
clean-fid's own Frechet distance)."""

import numpy as np

from pipeline.data import mnist
from pipeline.evaluation import fid, quality


def _fid(generated: np.ndarray, real: np.ndarray) -> float:
    stats = fid.statistics(real)
    return quality.Frechet(generated, quality.Reference(stats["mu"], stats["sigma"], real))()


def test_identical_sets_score_zero_and_different_sets_more(prepared_data):
    extractor = fid.InceptionFeatures(prepared_data / "assets" / "inception-2015-12-05.pt")
    test_x, test_y = mnist.load_split(prepared_data, "test")
    digits = test_x[:48]
    feats = fid.image_features(digits, extractor, batch_size=16)
    assert feats.shape == (48, 2048)
    same = _fid(feats, feats)
    assert abs(same) < 1e-2

    other_digits = fid.image_features(test_x[48:96], extractor, batch_size=16)  # same distribution
    noise = (np.random.default_rng(0).random(digits.shape) * 255).astype(np.uint8)
    noise_feats = fid.image_features(noise, extractor, batch_size=16)
    d_digits = _fid(other_digits, feats)
    d_noise = _fid(noise_feats, feats)
    assert d_digits > same + 1.0
    assert d_noise > 2 * d_digits  # noise is much further from digits than other digits are


def test_features_do_not_depend_on_how_the_images_are_batched(prepared_data):
    """A set that does not fill the last batch goes through in a batch of its own size (nothing padded):
    the same features as whole batches, to float rounding."""
    extractor = fid.InceptionFeatures(prepared_data / "assets" / "inception-2015-12-05.pt")
    digits = mnist.load_split(prepared_data, "test")[0][:7]
    np.testing.assert_allclose(fid.image_features(digits, extractor, batch_size=5),
                               fid.image_features(digits, extractor, batch_size=7), rtol=0, atol=1e-4)
