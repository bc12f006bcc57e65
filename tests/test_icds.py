"""ICDS against a hand computation on well-separated blobs, auto eps, projection, bad input."""
import json

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.decomposition import PCA

from inform_fast import icds as top_level_icds
from inform_fast.detect.icds import auto_eps, auto_eps_details, icds, knee_of_sorted
from inform_fast.detect.projection import PCAProjection
from inform_fast.testing import kernel_test_device, requires_cpp, requires_triton_interpreter

CENTERS = np.array([[0.0, 0.0, 0.0], [30.0, 0.0, 0.0], [0.0, 30.0, 0.0]])


def blobs(seed=0):
    rlhf, truth = make_blobs(n_samples=[61, 47, 33], n_features=3, centers=CENTERS, cluster_std=0.5, random_state=seed)
    rng = np.random.default_rng(seed)
    reference = rng.normal(size=(211, 3)) * 0.5 + np.array([2.0, 1.0, 0.0])
    return rlhf, truth, reference


def hand_icds(rlhf, groups, reference):
    total = 0.0
    for members in groups:
        centroid = rlhf[members].mean(0)
        total += len(members) * np.sqrt(((reference - centroid) ** 2).sum(1)).min()
    return total


@pytest.mark.parametrize(
    "backend", ["reference", pytest.param("cpp", marks=requires_cpp()), pytest.param("triton", marks=requires_triton_interpreter())]
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_blobs_equal_hand_computation(backend, dtype):
    rlhf, truth, reference = blobs()
    rlhf_outlier = np.vstack([rlhf, [[100.0, 100.0, 100.0]]])  # one noise point
    device = kernel_test_device() if backend == "triton" else "cpu"
    rlhf_in, reference_in = (torch.from_numpy(a.astype(dtype)).to(device) for a in (rlhf_outlier, reference))
    result = icds(rlhf_in, reference_in, eps=3.0, min_samples=5, backend=backend)
    assert result.labels.device.type == device
    groups = [np.flatnonzero(truth == k) for k in range(3)]
    expected = hand_icds(rlhf, groups, reference)
    assert result.n_clusters == 3 and result.n_noise == 1
    assert result.labels[-1] == -1
    np.testing.assert_allclose(result.score, expected, rtol=1e-5)
    np.testing.assert_allclose(result.normalized_score, expected / len(rlhf_outlier), rtol=1e-5)
    assert sorted(result.cluster_sizes.tolist()) == [33, 47, 61]
    # with the noise point as one more group
    noisy = icds(rlhf_in, reference_in, eps=3.0, min_samples=5, include_noise=True, backend=backend)
    extra = np.sqrt(((reference - np.array([100.0, 100.0, 100.0])) ** 2).sum(1)).min()
    np.testing.assert_allclose(noisy.score, expected + extra, rtol=1e-5)
    assert noisy.cluster_sizes.tolist()[-1] == 1 and noisy.n_clusters == 3
    assert noisy.deviations.shape == (4,) and noisy.centroids.shape == (4, 3)
    json.dumps(noisy.to_dict(include_labels=True))  # JSON-ready


def test_top_level_export_and_no_clusters():
    assert top_level_icds is icds
    rng = np.random.default_rng(0)
    result = icds(rng.normal(size=(20, 4)) * 100, rng.normal(size=(30, 4)), eps=0.01, min_samples=3)
    assert result.n_clusters == 0 and result.score == 0.0 and result.n_noise == 20


def test_auto_eps_on_blobs():
    x, _ = make_blobs(n_samples=900, n_features=8, centers=4, cluster_std=1.0, center_box=(-60, 60), random_state=2)
    eps = auto_eps(x, min_samples=5)
    # sensible: above the typical 5-NN distance inside a blob, far below the blob separation
    assert 1.0 < eps < 10.0
    result = icds(x, x, eps="auto", min_samples=5)
    assert result.eps == pytest.approx(eps)
    assert result.n_clusters == 4
    # the reference is the same set: each centroid is about one blob radius from a member
    assert result.normalized_score < 3.0


def test_knee_rule():
    curve = torch.tensor([1.0] * 90 + [1.1, 1.3, 2.0, 5.0, 9.0, 20.0, 40.0, 60.0, 80.0, 100.0])
    assert knee_of_sorted(curve) == pytest.approx(2.0) or knee_of_sorted(curve) == pytest.approx(5.0)
    assert knee_of_sorted(torch.ones(10)) == 1.0


def test_pca_projection_matches_sklearn():
    rng = np.random.default_rng(4)
    reference = rng.normal(size=(301, 7)) * np.arange(1, 8)
    rlhf = rng.normal(size=(57, 7))
    ours = PCAProjection(n_components=2, normalize=False).fit(reference)
    theirs = PCA(n_components=2).fit(reference)
    got = ours.transform(rlhf).numpy()
    want = theirs.transform(rlhf)
    np.testing.assert_allclose(np.abs(got), np.abs(want), rtol=1e-4, atol=1e-4)  # axes up to sign
    scaled = PCAProjection().fit(reference).transform(reference).numpy()
    assert scaled.min() == pytest.approx(0.0, abs=1e-6) and scaled.max() == pytest.approx(1.0, abs=1e-6)


def test_projection_options():
    rlhf, truth, reference = blobs(1)
    reference = np.vstack([reference, rlhf[:5]])
    by_name = icds(rlhf, reference, eps=0.05, min_samples=5, projection="pca")
    assert by_name.centroids.shape[1] == 2 and by_name.projection == "pca"
    by_object = icds(rlhf, reference, eps=0.05, min_samples=5, projection=PCA(n_components=2))
    assert by_object.centroids.shape[1] == 2 and by_object.projection == "PCA"
    with pytest.raises(ValueError, match="projection"):
        icds(rlhf, reference, projection="tsne-please")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(eps=0), "eps"),
        (dict(eps=-0.5), "eps"),
        (dict(eps="big"), "eps"),
        (dict(min_samples=0), "min_samples"),
        (dict(include_noise="yes"), "include_noise"),
    ],
)
def test_bad_arguments(kwargs, match):
    rlhf, _, reference = blobs()
    with pytest.raises(ValueError, match=match):
        icds(rlhf, reference, **kwargs)


def test_bad_latents():
    rlhf, _, reference = blobs()
    with pytest.raises(ValueError, match="reference_latents"):
        icds(rlhf, reference[:, :2])
    with pytest.raises(ValueError, match="rlhf_latents"):
        icds(np.zeros((0, 3)), reference)
    with pytest.raises(ValueError, match="reference_latents"):
        icds(rlhf, np.zeros((0, 3)))
    bad = rlhf.copy()
    bad[3, 2] = np.inf
    with pytest.raises(ValueError, match="rlhf_latents"):
        icds(bad, reference)
    with pytest.raises(ValueError, match="x"):
        auto_eps(np.zeros((1, 3)))


# --- command line ---------------------------------------------------------------------------


def write_inputs(tmp_path):
    from safetensors.numpy import save_file

    rlhf, truth, reference = blobs()
    np.save(tmp_path / "rlhf.npy", rlhf.astype(np.float32))
    save_file({"mu": reference.astype(np.float32)}, str(tmp_path / "ref.safetensors"))
    return rlhf, truth, reference


def test_cli_icds_end_to_end(tmp_path, capsys):
    from inform_fast.cli import main

    rlhf, truth, reference = write_inputs(tmp_path)
    out = tmp_path / "result.json"
    code = main(["icds", "--rlhf", str(tmp_path / "rlhf.npy"), "--reference", str(tmp_path / "ref.safetensors"),
                 "--eps", "3.0", "--min-samples", "5", "--output", str(out), "--labels"])
    assert code == 0
    payload = json.loads(out.read_text())
    expected = hand_icds(rlhf, [np.flatnonzero(truth == k) for k in range(3)], reference)
    assert payload["score"] == pytest.approx(expected, rel=1e-5)
    assert payload["n_clusters"] == 3 and len(payload["labels"]) == len(rlhf)
    assert "ICDS" in capsys.readouterr().out
    auto = tmp_path / "auto.json"
    assert main(["icds", "--rlhf", str(tmp_path / "rlhf.npy"), "--reference", str(tmp_path / "ref.safetensors"),
                 "--eps", "auto", "--include-noise", "--projection", "pca", "--key", "mu", "--output", str(auto)]) == 2
    # --key mu does not exist in the .npy (a single array): a clean error, nothing written
    assert not auto.exists()
    assert main(["icds", "--rlhf", str(tmp_path / "rlhf.npy"), "--reference", str(tmp_path / "ref.safetensors"),
                 "--eps", "auto", "--include-noise", "--projection", "pca", "--output", str(auto)]) == 0
    assert json.loads(auto.read_text())["projection"] == "pca"


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--eps", "0"], "--eps: "),
        (["--eps", "wide"], "--eps: "),
        (["--min-samples", "0"], "--min-samples: "),
    ],
)
def test_cli_icds_bad_input_writes_nothing(tmp_path, capsys, extra, match):
    from inform_fast.cli import main

    write_inputs(tmp_path)
    out = tmp_path / "result.json"
    code = main(["icds", "--rlhf", str(tmp_path / "rlhf.npy"), "--reference", str(tmp_path / "ref.safetensors"), "--output", str(out), *extra])
    assert code == 2 and not out.exists()
    assert match in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cli_icds_dimension_mismatch_and_nan(tmp_path, capsys):
    from inform_fast.cli import main

    write_inputs(tmp_path)
    np.save(tmp_path / "narrow.npy", np.zeros((10, 2), np.float32))
    bad = np.zeros((10, 3), np.float32)
    bad[4, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    out = tmp_path / "r.json"
    assert main(["icds", "--rlhf", str(tmp_path / "narrow.npy"), "--reference", str(tmp_path / "ref.safetensors"), "--output", str(out)]) == 2
    assert "--reference" in capsys.readouterr().err
    assert main(["icds", "--rlhf", str(tmp_path / "nan.npy"), "--reference", str(tmp_path / "ref.safetensors"), "--output", str(out)]) == 2
    assert "NaN" in capsys.readouterr().err and not out.exists()


def test_cli_plot_latents(tmp_path):
    from inform_fast.cli import main

    write_inputs(tmp_path)
    png = tmp_path / "map.png"
    assert main(["plot-latents", "--rlhf", str(tmp_path / "rlhf.npy"), "--reference", str(tmp_path / "ref.safetensors"),
                 "--out", str(png), "--eps", "3.0"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = tmp_path / "none.png"
    assert main(["plot-latents", "--rlhf", str(tmp_path / "nope.npy"), "--reference", str(tmp_path / "ref.safetensors"),
                 "--out", str(missing)]) == 2
    assert not missing.exists()


def test_same_result_without_the_extension(monkeypatch):
    from inform_fast import dispatch

    rlhf, truth, reference = blobs(2)
    with_ext = icds(rlhf.astype(np.float32), reference.astype(np.float32), eps=3.0, min_samples=5)
    monkeypatch.setattr(dispatch, "cpp_available", lambda: False)  # as if INFORM_FAST_BUILD_CPP=0
    assert dispatch.resolve("dbscan", "cpu")[0] == "reference"
    assert dispatch.resolve("nearest_distance", "cpu")[0] == "reference"
    without = icds(rlhf.astype(np.float32), reference.astype(np.float32), eps=3.0, min_samples=5)
    torch.testing.assert_close(with_ext.labels, without.labels)
    np.testing.assert_allclose(with_ext.score, without.score, rtol=1e-6)
    expected = hand_icds(rlhf, [np.flatnonzero(truth == k) for k in range(3)], reference)
    np.testing.assert_allclose(without.score, expected, rtol=1e-5)


# --- exactness and auto eps with duplicates (issue 11) ----------------------------------------


def test_auto_eps_with_repeated_rows():
    # a collapsed policy: 90% of the responses are copies of 10 latents, the rest diffuse. eps must
    # not fall to rounding noise (the old knee gave ~2^-9 and DBSCAN then dropped copies as
    # noise), and every group of copies is a cluster
    rng = np.random.default_rng(5)
    distinct = rng.normal(size=(10, 64)) * 3 + 20
    copies = np.repeat(distinct, 90, axis=0)
    diffuse = rng.normal(size=(100, 64)) + 20
    rlhf = np.vstack([copies, diffuse]).astype(np.float32)[rng.permutation(1000)]
    result = icds(rlhf, diffuse.astype(np.float32), eps="auto", min_samples=5)
    choice = result.eps_choice
    assert choice["rule"] == "knee" and choice["duplicate_share"] > 0.8 and result.eps == choice["eps"]
    assert result.eps > 1.0  # the diffuse part's scale, far above rounding noise
    copy_rows = np.isin(rlhf, distinct).all(1)
    assert (result.labels.numpy()[copy_rows] >= 0).all()
    assert json.loads(json.dumps(result.to_dict()))["eps_choice"]["rule"] == "knee"
    assert icds(rlhf, diffuse, eps=1.0).eps_choice is None


def test_auto_eps_when_every_latent_is_the_same():
    x = np.full((50, 4), 7.0, np.float32)
    choice = auto_eps_details(x, min_samples=5)
    assert choice.rule == "identical" and choice.eps > 0
    result = icds(x, x, eps="auto", min_samples=5)
    assert result.n_clusters == 1 and result.cluster_sizes.tolist() == [50] and result.score == 0.0


@pytest.mark.parametrize(
    "backend", ["reference", pytest.param("cpp", marks=requires_cpp()), pytest.param("triton", marks=requires_triton_interpreter())]
)
def test_magnitudes_of_1e20(backend):
    # the old ICDS found 0 clusters here (float32 squares overflow); every distance scales by 1e20
    rlhf, truth, reference = blobs()
    device = kernel_test_device() if backend == "triton" else "cpu"
    big_rlhf, big_reference = (torch.from_numpy((a * 1e20).astype(np.float32)).to(device) for a in (rlhf, reference))
    result = icds(big_rlhf, big_reference, eps=3e20, min_samples=5, backend=backend)
    expected = hand_icds(rlhf, [np.flatnonzero(truth == k) for k in range(3)], reference) * 1e20
    assert result.n_clusters == 3
    np.testing.assert_allclose(result.score, expected, rtol=1e-5)  # float32 latents and centroid sums
