"""Video tracking against the official SAM2VideoPredictor (single object, forward propagation)."""
import numpy as np
import pytest

from golden_model.video import Tracker, TrackerConfig, VideoPredictor
from tests.golden.video_helpers import (OfficialImagePath, max_rel_err, memoize_official_image_encoder,
                                        memory_weights, write_moving_shape_clip)

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.oracle
TOL = 1e-3


def run_scenario(predictor, state, score, clicks):
    """Click on frame 0, propagate, correction click mid-video, propagate from the next frame.
    Returns [(name, frame, logits, object score)] in order."""
    results = []
    f, _, m = predictor.add_new_points_or_box(state, clicks[0][0], 1, points=clicks[0][1], labels=clicks[0][2])
    results.append(("click", f, np.asarray(m), score(state, f)))
    for f, _, m in predictor.propagate_in_video(state):
        results.append(("track", f, np.asarray(m), score(state, f)))
    f, _, m = predictor.add_new_points_or_box(state, clicks[1][0], 1, points=clicks[1][1], labels=clicks[1][2])
    results.append(("correct", f, np.asarray(m), score(state, f)))
    for f, _, m in predictor.propagate_in_video(state, start_frame_idx=clicks[1][0] + 1):
        results.append(("track2", f, np.asarray(m), score(state, f)))
    return results


def official_score(state, f):
    d = state["output_dict_per_obj"][0]
    t = state["temp_output_dict_per_obj"][0]
    for src in (t["cond_frame_outputs"], t["non_cond_frame_outputs"], d["cond_frame_outputs"],
                d["non_cond_frame_outputs"]):
        if f in src:
            return float(src[f]["object_score_logits"].reshape(-1)[0])
    raise KeyError(f)


CLICKS = [(0, [[40, 45]], [1]), (5, [[70, 60], [20, 20]], [1, 0])]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip")
    write_moving_shape_clip(d, n_frames=10)
    return d


@pytest.fixture(scope="module")
def official_tiny(clip):
    from tests.golden.oracle import official_model
    model = memoize_official_image_encoder(official_model("tiny", seed=0, video=True))
    with torch.inference_mode():
        state = model.init_state(str(clip))
        results = run_scenario(model, state, official_score, CLICKS)
    return model, [(n, f, m.numpy() if hasattr(m, "numpy") else m, s) for n, f, m, s in results]


def compare(golden, official):
    assert [(n, f) for n, f, _, _ in golden] == [(n, f) for n, f, _, _ in official]
    worst = 0.0
    for (n, f, gm, gs), (_, _, om, os_) in zip(golden, official):
        err = max_rel_err(gm, om)
        worst = max(worst, err)
        assert err <= TOL, f"{n} frame {f}: mask logits differ by {err:.2e} (relative)"
        assert (gs > 0) == (os_ > 0), f"{n} frame {f}: object presence {gs} vs official {os_}"
    return worst


def test_tracking_logic_matches_official_predictor(clip, official_tiny):
    """The memory bank, memory encoder/attention and predictor logic of golden_model.video, with the
    official image path underneath: equal to the official video predictor frame by frame."""
    model, official = official_tiny
    tracker = Tracker(memory_weights(model), OfficialImagePath(model), TrackerConfig())
    predictor = VideoPredictor(tracker, feature_cache_size=16)
    state = predictor.init_state(clip)
    golden = run_scenario(predictor, state, predictor.object_score_logits, CLICKS)
    compare(golden, official)
