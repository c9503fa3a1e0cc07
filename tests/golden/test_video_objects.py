"""Several objects in one video against the official SAM2VideoPredictor: points, a box and a mask on
frames 0 and 5, a correction click on frame 8, forward and reverse propagation, start_frame_idx."""
import numpy as np
import pytest

from golden_model.video import VideoPredictor
from tests.golden.video_helpers import (golden_twin, max_rel_err, memoize_official_image_encoder, one_torch_thread,
                                        promote_bf16_memory, write_moving_shape_clip)

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.oracle
TOL = 1e-3
W, H = 160, 120          # the clip's frames; the ellipse starts at (40, 45) and moves (6, 3) per frame


def _mask_prompt():
    yy, xx = np.mgrid[0:H, 0:W]
    return (xx >= 100) & (xx < 150) & (yy >= 70) & (yy < 110)


FIRST = (0, 1, dict(points=[[40, 45], [10, 10]], labels=[1, 0]))
PROMPTS = [FIRST, (0, 3, dict(mask=_mask_prompt())), (5, 2, dict(box=[50, 45, 95, 78]))]
CORRECTION = (8, 1, dict(points=[[95, 72]], labels=[0]))


def _add(predictor, state, frame, obj_id, prompt):
    if "mask" in prompt:
        return predictor.add_new_mask(state, frame, obj_id, prompt["mask"])
    return predictor.add_new_points_or_box(state, frame, obj_id, **prompt)


def run_scenario(predictor, state, score, reverse):
    """Prompts on frames 0 and 5, propagation (forward from the default start, or reverse from the
    last frame), the correction on frame 8, propagation from the next frame in the same direction.
    Returns [(step, frame, obj_ids, masks (objects, 1, H, W), {obj_id: object score})]."""
    results = []

    def record(step, frame, ids, masks):
        masks = masks.numpy() if hasattr(masks, "numpy") else np.asarray(masks)
        results.append((step, frame, list(ids), masks, {i: score(state, frame, i) for i in ids}))

    for frame, obj_id, prompt in PROMPTS:
        record("prompt", *_add(predictor, state, frame, obj_id, prompt))
    start = 9 if reverse else None
    for out in predictor.propagate_in_video(state, start_frame_idx=start, reverse=reverse):
        record("track", *out)
    frame, obj_id, prompt = CORRECTION
    record("correct", *_add(predictor, state, frame, obj_id, prompt))
    for out in predictor.propagate_in_video(state, start_frame_idx=frame + (-1 if reverse else 1), reverse=reverse):
        record("track2", *out)
    return results


def official_score(state, frame, obj_id):
    idx = state["obj_id_to_idx"][obj_id]
    for d in (state["temp_output_dict_per_obj"][idx], state["output_dict_per_obj"][idx]):
        for key in ("cond_frame_outputs", "non_cond_frame_outputs"):
            if frame in d[key]:
                return float(d[key][frame]["object_score_logits"].reshape(-1)[0])
    return None   # the object has no output on this frame (yet)


def golden_score(predictor):
    def score(state, frame, obj_id):
        try:
            return predictor.object_score_logits(state, frame, obj_id)
        except KeyError:
            return None
    return score


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip")
    write_moving_shape_clip(d, n_frames=10, size=(W, H))
    return d


# (model, input size, object 1's first-click score after the bias shift): -0.5 makes objects come and
# go with tiny at 256 but leaves every object absent with small (at 256 and 1024), which takes +2 (as
# test_video.py); small runs at 256 too (1024 took 9 minutes forward on this machine, ~2 at 256)
CASES = [("tiny", 256, -0.5), pytest.param(("small", 256, 2.0), marks=pytest.mark.slow)]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def models(request, clip):
    """Official and golden models with the same seeded random weights. Random weights often call an
    object absent everywhere (all masks -1024, a comparison that proves little), so the object-score
    head's output bias is shifted to put object 1's first click at the case's score: with tiny at 256
    (-0.5) objects 1 and 2 then come and go (no-object pointers and memories on some frames)."""
    from tests.golden.oracle import official_model
    name, size, first_score = request.param
    threads = one_torch_thread()
    next(threads)
    request.addfinalizer(lambda: next(threads, None))
    model = memoize_official_image_encoder(official_model(name, seed=0, video=True, image_size=size))
    promote_bf16_memory(model)   # object 2 is tracked on frames 0..4 from its frame-5 memory alone
    model.fill_hole_area = 0   # hole filling needs the CUDA extension; the golden model has none
    with torch.inference_mode():
        state = model.init_state(str(clip))
        frame, obj_id, prompt = FIRST
        _add(model, state, frame, obj_id, prompt)
        head = model.sam_mask_decoder.pred_obj_score_head.layers[-1]
        head.bias += first_score - official_score(state, frame, obj_id)
    return (name, size), model, golden_twin(model, name, size)


def compare(golden, official):
    assert [(s, f, ids) for s, f, ids, _, _ in golden] == [(s, f, ids) for s, f, ids, _, _ in official]
    worst = 0.0
    for (step, f, ids, gm, gs), (_, _, _, om, os_) in zip(golden, official):
        err = max_rel_err(gm, om)
        worst = max(worst, err)
        assert err <= TOL, f"{step} frame {f}: mask logits differ by {err:.2e} (relative)"
        for i in ids:
            assert (gs[i] is None) == (os_[i] is None), f"{step} frame {f} object {i}: output {gs[i]} vs {os_[i]}"
            assert gs[i] is None or (gs[i] > 0) == (os_[i] > 0), \
                f"{step} frame {f} object {i}: presence {gs[i]} vs official {os_[i]}"
    return worst


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_three_objects_match_official_predictor(clip, models, reverse):
    """Every returned mask (video resolution, all objects) within 1e-3 relative of the official
    predictor, object presence identical; conditioning frames stay per object."""
    (name, size), official_model, golden = models
    with torch.inference_mode():
        state = official_model.init_state(str(clip))
        official = run_scenario(official_model, state, official_score, reverse)
    predictor = VideoPredictor(golden.tracker)
    gstate = predictor.init_state(clip)
    golden_results = run_scenario(predictor, gstate, golden_score(predictor), reverse)
    worst = compare(golden_results, official)

    presence = {i: "".join("-" if s.get(i) is None else "1" if s[i] > 0 else "0" for *_, s in official)
                for i in (1, 2, 3)}
    print(f"{name} @ {size}, {'reverse' if reverse else 'forward'}: worst relative mask-logit error "
          f"{worst:.2e} over {len(official)} outputs; presence {presence}")
    assert all("1" in p for p in presence.values()), "scenario is trivial: an object is absent everywhere"
    if (name, size) == ("tiny", 256):   # the default-run case covers the no-object path too
        assert any("0" in p for p in presence.values()), "no object is ever absent: the no-object path is untested"
    assert max(np.ptp(obj) for *_, m, _ in official for obj in m) > 1.0, "scenario is trivial: constant masks"
    assert [s for s, *_ in official].count("track") == 10
    # the correction stays a non-conditioning frame; each object keeps its own conditioning frames
    cond = {i: sorted(o.output_dict["cond_frame_outputs"]) for i, o in gstate.objects.items()}
    assert cond == {1: [0], 2: [5], 3: [0]}
    assert 8 in gstate.objects[1].output_dict["non_cond_frame_outputs"]


def test_image_encoder_runs_once_per_frame_for_all_objects(clip, models):
    """Propagation encodes each frame once whatever the object count (the official cache: last frame)."""
    _, _, golden = models
    counts = {}
    for n_obj in (1, 3):
        predictor = VideoPredictor(golden.tracker)
        state = predictor.init_state(clip)
        for obj_id in range(1, n_obj + 1):
            predictor.add_new_points_or_box(state, 0, obj_id, points=[[20 + 30 * obj_id, 45]], labels=[1])
        before = state.image_encoder_calls
        frames = [f for f, ids, m in predictor.propagate_in_video(state, max_frame_num_to_track=3)]
        assert frames == [0, 1, 2, 3]
        counts[n_obj] = state.image_encoder_calls - before
    assert counts == {1: 3, 3: 3}   # frames 1..3 (frame 0's features are still cached)


def test_objects_are_independent(clip, models):
    """An object's masks do not depend on the other objects tracked with it (each has its own bank)."""
    _, _, golden = models
    predictor = VideoPredictor(golden.tracker, feature_cache_size=4)
    alone = predictor.init_state(clip)
    predictor.add_new_points_or_box(alone, 0, 7, points=[[40, 45]], labels=[1])
    ref = {f: m for f, _, m in predictor.propagate_in_video(alone, max_frame_num_to_track=3)}
    both = predictor.init_state(clip)
    predictor.add_new_points_or_box(both, 2, 9, box=[50, 45, 95, 78])
    predictor.add_new_points_or_box(both, 0, 7, points=[[40, 45]], labels=[1])
    for f, ids, m in predictor.propagate_in_video(both, start_frame_idx=0, max_frame_num_to_track=3):
        assert ids == [9, 7]
        np.testing.assert_array_equal(m[1:], ref[f])


def test_multi_object_api_errors(clip):
    from copy import copy
    from dataclasses import replace

    from golden_model.model import SAM2Model
    from golden_model.video import VideoState
    tracker = SAM2Model("tiny", seed=0).tracker
    clearing = copy(tracker)
    clearing.cfg = replace(tracker.cfg, clear_non_cond_mem_around_input=True)
    with pytest.raises(ValueError, match="clear_non_cond_mem_around_input"):
        VideoPredictor(clearing)
    predictor = VideoPredictor(tracker)
    state = VideoState(frames=sorted(clip.iterdir()), video_height=H, video_width=W)  # no encoder run
    with pytest.raises(RuntimeError, match="add a prompt"):
        next(predictor.propagate_in_video(state))
    with pytest.raises(ValueError, match="outside the video"):
        predictor.add_new_points_or_box(state, 10, 1, [[1, 1]], [1])
    with pytest.raises(ValueError, match="one label per point"):
        predictor.add_new_points_or_box(state, 0, 2, [[1, 1], [2, 2]], [1])
    with pytest.raises(ValueError, match="2-D"):
        predictor.add_new_mask(state, 0, 3, np.zeros((1, 4, 4)))
    assert state.obj_ids == []   # a refused prompt adds no object
    with pytest.raises(KeyError, match="object 5"):
        predictor.object_score_logits(state, 0, 5)
