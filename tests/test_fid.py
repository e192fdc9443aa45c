"""FID on known inputs, through clean-fid with the pinned Inception weights."""

import numpy as np

from pipeline import fid, mnist


def test_identical_sets_score_zero_and_different_sets_more(prepared_data):
    extractor = fid.InceptionFeatures(prepared_data / "assets" / "inception-2015-12-05.pt")
    test_x, test_y = mnist.load_split(prepared_data, "test")
    digits = test_x[:48]
    feats = fid.image_features(digits, extractor, batch_size=16)
    assert feats.shape == (48, 2048)
    same = fid.frechet(fid.statistics(feats), fid.statistics(feats))
    assert abs(same) < 1e-2

    other_digits = fid.image_features(test_x[48:96], extractor, batch_size=16)  # same distribution
    noise = (np.random.default_rng(0).random(digits.shape) * 255).astype(np.uint8)
    noise_feats = fid.image_features(noise, extractor, batch_size=16)
    d_digits = fid.frechet(fid.statistics(feats), fid.statistics(other_digits))
    d_noise = fid.frechet(fid.statistics(feats), fid.statistics(noise_feats))
    assert d_digits > same + 1.0
    assert d_noise > 2 * d_digits  # noise is much further from digits than other digits are
