"""Top-k with labels, raw outputs as .npy, batching, benchmark report, and bad inputs."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from infer_fixtures import CLASSIFIER_W, LABELS, classifier_model, features_model
from PIL import Image


def _solid(path, rgb, size=(4, 4)):
    Image.new("RGB", size, rgb).save(path)
    return path


def _softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def test_classifier_top_k_uses_the_metadata_labels(cli, save, tmp_path):
    image = _solid(tmp_path / "magenta.png", (255, 0, 51))  # x = (1, 0, 0.2): logits r, g, b, rb, neg
    code, out, err = cli(save(classifier_model()), image, "--topk", "3", "--json")
    assert code == 0, err
    (prediction,) = json.loads(out)["predictions"]
    logits = np.array([1.0, 0.0, 0.2, 1.2, -1.0])
    assert [p["label"] for p in prediction["topk"]] == ["rb", "r", "b"]
    assert [p["index"] for p in prediction["topk"]] == [3, 0, 2]
    np.testing.assert_allclose([p["score"] for p in prediction["topk"]], _softmax(logits)[[3, 0, 2]], rtol=1e-5)


def test_human_output_lists_labels_best_first(cli, save, tmp_path):
    image = _solid(tmp_path / "green.png", (0, 255, 0))
    code, out, err = cli(save(classifier_model()), image, "--topk", "2")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1].endswith("green.png")
    assert lines[2].split()[:2] == ["1.", "g"] and len(lines) == 4


def test_top_k_without_labels_names_classes_by_index(infer):
    (row,) = infer.top_k(np.array([[0.1, 0.7, 0.2]]), 2, None)
    assert [(r["label"], r["index"]) for r in row] == [("class_1", 1), ("class_2", 2)]
    assert row[0]["score"] == pytest.approx(0.7)  # already probabilities: no second softmax


def test_saved_outputs_equal_a_direct_onnxruntime_run(cli, save, tmp_path):
    model = save(features_model())
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code, out, err = cli(model, tmp_path / "x.npy", "--save-outputs", tmp_path / "raw", "--json")
    assert code == 0, err
    saved = np.load(tmp_path / "raw" / "feat.npy")
    reference = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(saved, reference)
    np.testing.assert_allclose(saved, 2 * x + 1, rtol=1e-6)
    report = json.loads(out)
    assert report["predictions"] is None
    (stats,) = report["outputs"]
    assert stats["shape"] == [2, 3, 8, 6] and stats["mean"] == pytest.approx(float((2 * x + 1).mean()), rel=1e-5)
    assert (tmp_path / "raw" / "sources.txt").read_text().splitlines() == [f"{tmp_path / 'x.npy'}[0]",
                                                                          f"{tmp_path / 'x.npy'}[1]"]


def test_dynamic_batch_runs_all_images_at_once_static_batch_one_at_a_time(cli, save, tmp_path):
    images = [_solid(tmp_path / f"{i}.png", (60 * i, 0, 0)) for i in range(3)]
    code, out, err = cli(save(classifier_model("batch"), "dyn.onnx"), *images, "--json")
    dynamic = json.loads(out)
    code_s, out_s, err_s = cli(save(classifier_model(1), "static.onnx"), *images, "--json")
    static = json.loads(out_s)
    assert (code, code_s) == (0, 0)
    assert dynamic["runs"] == 1 and static["runs"] == 3
    assert dynamic["items"] == static["items"] == [str(p) for p in images]
    for d, s, i in zip(dynamic["predictions"], static["predictions"], range(3), strict=True):
        expected = (np.array([60 * i / 255, 0, 0]) @ CLASSIFIER_W)
        assert d["topk"][0]["raw"] == pytest.approx(expected.max(), abs=1e-6)
        assert d["topk"] == s["topk"]


def test_dynamic_batch_respects_batch_option(cli, save, tmp_path):
    images = [_solid(tmp_path / f"{i}.png", (0, 0, 10 * i)) for i in range(5)]
    code, out, err = cli(save(classifier_model("batch")), *images, "--batch", "2", "--json")
    assert code == 0, err
    assert json.loads(out)["runs"] == 3 and len(json.loads(out)["predictions"]) == 5


def test_bench_reports_latency_percentiles_throughput_and_session_time(cli, save):
    code, out, err = cli(save(classifier_model()), "--random", "--bench", "15", "--warmup", "2", "--json")
    assert code == 0, err
    report = json.loads(out)
    bench = report["bench"]
    assert (bench["runs"], bench["warmup"], bench["batch"]) == (15, 2, 1)
    lat = bench["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert bench["throughput_items_per_s"] == pytest.approx(1000.0 / lat["mean"], rel=1e-6)
    assert report["session_create_s"] > 0 and report["first_run_s"] > 0


def test_human_bench_output_names_every_figure(cli, save):
    code, out, err = cli(save(classifier_model()), "--random", "--bench", "5", "--warmup", "1")
    assert code == 0, err
    for word in ("p50", "p90", "p99", "items/s", "session creation"):
        assert word in out


def test_random_inputs_need_a_shape_for_unknown_dynamic_axes(cli, save):
    model = save(features_model({"blocks_export.export_shape": "{}"}))
    code, out, err = cli(model, "--random")
    assert code == 2 and "pass --shape x=Nx3xNxN" in err
    code, out, err = cli(model, "--random", "--shape", "x=2x3x5x7", "--json")
    assert code == 0, err
    assert json.loads(out)["outputs"][0]["shape"] == [2, 3, 5, 7]


@pytest.mark.parametrize("args, why", [
    ([], "no inputs"),
    (["missing.png"], "input not found"),
    (["--topk", "0", "--random"], "--topk 0"),
    (["--provider", "gpu", "--random"], "invalid choice"),
    (["--threads", "0", "--random"], "--threads 0"),
])
def test_bad_usage_exits_2_with_one_line(cli, save, args, why):
    code, out, err = cli(save(classifier_model()), *args)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and why in err and "Traceback" not in err


def test_npy_with_python_objects_is_not_unpickled(cli, save, tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    code, out, err = cli(save(classifier_model()), tmp_path / "obj.npy")
    assert code == 2 and "without unpickling" in err


def test_npy_of_the_wrong_shape_is_bad_input(cli, save, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 5, 5), np.float32))
    code, out, err = cli(save(classifier_model()), tmp_path / "x.npy")
    assert code == 2 and "expects" in err and "(axis 2)" in err


def test_labels_in_metadata_are_used_verbatim(infer):
    meta = infer.parse_meta({m.key: m.value for m in classifier_model().metadata_props})
    assert meta.labels == LABELS and meta.task == "classify"
    with pytest.raises(infer.BadInput, match="blocks_export.labels is not valid JSON"):
        infer.parse_meta({"blocks_export.labels": "[not json"})


def test_unreadable_or_floating_point_image_is_bad_input(cli, save, tmp_path):
    (tmp_path / "garbage.png").write_bytes(b"not a png at all")
    code, out, err = cli(save(classifier_model()), tmp_path / "garbage.png")
    assert code == 2 and "cannot read image" in err
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(tmp_path / "float.tif")  # mode F
    code, out, err = cli(save(classifier_model()), tmp_path / "float.tif")
    assert code == 2 and "convert it to 8-bit" in err
    Image.fromarray(np.full((4, 4), 40000, dtype=np.uint16)).save(tmp_path / "deep.png")  # 16-bit: read (high byte)
    code, out, err = cli(save(classifier_model()), tmp_path / "deep.png")
    assert code == 0, err


def test_save_outputs_never_writes_through_a_link_already_in_the_folder(cli, save, tmp_path):
    # #13: links planted in DIR under the names the outputs get must not redirect the writes outside DIR.
    model = save(features_model())
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    victim_npy, victim_txt = tmp_path / "victim.npy", tmp_path / "victim.txt"
    victim_npy.write_bytes(b"keep me")
    victim_txt.write_bytes(b"keep me too")
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "feat.npy").symlink_to(victim_npy)
    (raw / "sources.txt").symlink_to(victim_txt)
    code, out, err = cli(model, tmp_path / "x.npy", "--save-outputs", raw)
    assert code == 0, err
    assert victim_npy.read_bytes() == b"keep me" and victim_txt.read_bytes() == b"keep me too"
    assert not (raw / "feat.npy").is_symlink() and not (raw / "sources.txt").is_symlink()
    np.testing.assert_allclose(np.load(raw / "feat.npy"), 2 * x + 1, rtol=1e-6)
    assert not [p.name for p in raw.iterdir() if p.name.endswith(".tmp")]
