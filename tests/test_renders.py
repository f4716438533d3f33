"""The training renders: the rasteriser covers what K projects, renders are reproducible and
their labels (keypoints, K, mask) agree with the image; crops match the renders' camera."""

import numpy as np
import pytest
from hhmr.data.raster import project_points, rasterize
from hhmr.data.renders import RenderSet, render_batch, render_set
from hhmr.encoders import CROP_MARGIN, crop_affine, crop_intrinsics, hand_crop

K = np.array([[100.0, 0, 50], [0, 100, 50], [0, 0, 1]])


def square(z: float, half: float = 0.1, dx: float = 0.0):
    v = np.array([[-half + dx, -half, z], [half + dx, -half, z], [half + dx, half, z],
                  [-half + dx, half, z]])
    return v, np.array([[0, 1, 2], [0, 2, 3]])


def test_a_square_covers_exactly_the_pixels_K_projects_it_to():
    v, f = square(1.0)  # corners project to 40 and 60: pixel centres 40.5 .. 59.5 inside
    frag = rasterize(v, f, K, 100, 100)
    covered = frag.face >= 0
    assert covered.sum() == 400
    ys, xs = np.nonzero(covered)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (40, 59, 40, 59)
    assert np.allclose(frag.depth[covered], 1.0)
    shifted = rasterize(*square(1.0, dx=0.05), K, 100, 100)  # 0.05 m at 1 m = 5 px
    assert np.nonzero(shifted.face >= 0)[1].min() == 45


def test_the_nearer_surface_wins_and_barycentrics_recover_the_pixel():
    far, f = square(2.0, half=0.3)
    near, _ = square(1.0, half=0.05)
    frag = rasterize(np.concatenate([far, near]), np.concatenate([f, f + 4]), K, 100, 100)
    assert (frag.face[50, 50]) >= 2 and frag.depth[50, 50] == pytest.approx(1.0)
    assert frag.face[38, 50] in (0, 1) and frag.depth[38, 50] == pytest.approx(2.0)
    pts = np.concatenate([far, near])
    uv = project_points(pts, K)
    ys, xs = np.nonzero(frag.face >= 0)
    tri = np.concatenate([f, f + 4])[frag.face[ys, xs]]
    recon = (uv[tri] * frag.bary[ys, xs][..., None]).sum(1)
    assert np.abs(recon - np.stack([xs + 0.5, ys + 0.5], 1)).max() < 1e-6


@pytest.fixture(scope="module")
def renders():
    return render_batch(6, seed=11)


def test_renders_are_labelled_where_the_hand_is(renders):
    assert renders.images.shape == (6, 224, 224, 3) and renders.images.dtype == np.uint8
    assert renders.K.shape == (6, 3, 3) and renders.keypoints.shape == (6, 21, 2)
    for i in range(6):
        # the keypoints are the joints through K, framed by the crop around them
        cam = renders.joints[i] + renders.transl[i]
        assert np.allclose(project_points(cam, renders.K[i]), renders.keypoints[i], atol=1e-3)
        lo, hi = renders.keypoints[i].min(0), renders.keypoints[i].max(0)
        assert 224 / CROP_MARGIN * 0.75 < (hi - lo).max() < 224 / CROP_MARGIN * 1.3
        # the visible-skin mask lies on the projected mesh
        mask = renders.masks[i]
        assert mask.sum() > 300
        uv = project_points(renders.vertices[i] + renders.transl[i], renders.K[i])
        ys, xs = np.nonzero(mask)
        assert xs.min() >= uv[:, 0].min() - 2 and xs.max() <= uv[:, 0].max() + 2
        assert ys.min() >= uv[:, 1].min() - 2 and ys.max() <= uv[:, 1].max() + 2
    assert len({renders.images[i].tobytes() for i in range(6)}) == 6


def test_renders_are_reproducible_and_cached(tmp_path, renders):
    again = render_batch(6, seed=11)
    assert np.array_equal(again.images, renders.images)
    first = render_set(3, 5, tmp_path, chunk=2, progress=False)
    files = sorted(tmp_path.glob("renders_*.npz"))
    assert len(files) == 2
    stamp = [f.stat().st_mtime_ns for f in files]
    second = render_set(3, 5, tmp_path, chunk=2, progress=False)
    assert [f.stat().st_mtime_ns for f in files] == stamp  # read back, not rendered again
    assert np.array_equal(first.images, second.images)
    assert len(RenderSet.load(files[0])) == 2


def test_the_crop_camera_and_the_photo_crop_agree():
    rng = np.random.default_rng(0)
    kp = rng.uniform(100, 300, (21, 2))
    Kimg = np.array([[500.0, 0, 200], [0, 500, 150], [0, 0, 1]])
    Kc = crop_intrinsics(Kimg, kp)
    a = crop_affine(kp)
    pts = rng.uniform(-0.1, 0.1, (5, 3)) + [0, 0, 1]
    assert np.allclose(project_points(pts, Kc),
                       (project_points(pts, Kimg) @ a[:2, :2].T) + a[:2, 2], atol=1e-3)
    # a dot at a keypoint of the photo lands where the crop's map puts it
    img = np.zeros((400, 400, 3), np.uint8)
    x, y = kp[3].round().astype(int)
    img[y - 2:y + 3, x - 2:x + 3] = 255
    crop = hand_crop(img, kp)
    cy, cx = np.argwhere(crop[..., 0] > 128).mean(0)
    expect = a[:2, :2] @ (kp[3].round() + 0.5) + a[:2, 2]
    assert abs(cx + 0.5 - expect[0]) < 1.5 and abs(cy + 0.5 - expect[1]) < 1.5
    assert np.array_equal(hand_crop(img, kp, mirror=True), crop[:, ::-1])
