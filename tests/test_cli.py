"""The lightning-edge console command."""
from __future__ import annotations

import json
import subprocess
import sys

from lightning_edge.cli import main


def test_models_lists_ours_in_natural_order(capsys):
    assert main(["models", "cifar_resnet*"]) == 0
    assert capsys.readouterr().out.split() == [f"cifar_resnet{d}" for d in (20, 32, 44, 56, 110)]


def test_profile_reports_parameters_and_macs(capsys):
    assert main(["profile", "cifar_wrn_16_2", "--layers"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["parameters"] == 691_674
    assert result["macs"] == sum(result["macs_per_layer"].values())


def test_unknown_model_is_a_clean_error(capsys):
    assert main(["profile", "not_a_model"]) == 2
    assert "unknown model name 'not_a_model'" in capsys.readouterr().err


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "lightning_edge.cli", "models", "cifar_wrn_40_*"], capture_output=True, text=True)
    assert result.returncode == 0 and "cifar_wrn_40_2" in result.stdout


def test_student_prints_the_moonshine_report(capsys):
    assert main(["student", "cifar_wrn_40_2", "--block", "BG(2,4)", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["teacher"]["parameters"] == 2_243_546 and report["student"]["parameters"] == 421_082
    assert main(["student", "cifar_resnet20", "--block", "G3"]) == 2
    assert "groups must divide its 16 input channels" in capsys.readouterr().err


def test_qat_plan_lists_int8_layers_and_refuses_what_the_runtime_cannot_run(capsys):
    assert main(["qat-plan", "cifar_resnet20", "--in-chans", "1", "--image-size", "28"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("cifar_resnet20: 22 int8 layers, 34 int8 tensors")
    assert "layer1.0.conv1               conv + BatchNorm layer1.0.bn1 + relu" in out
    assert "residual add + relu (output of layer1.0.relu2)" in out
    assert main(["qat-plan", "mobilevit_xxs", "--json"]) == 2
    assert "cannot trace ByobNet with torch.fx" in capsys.readouterr().err


def test_export_writes_a_train_py_checkpoint_as_onnx(tmp_path, capsys):
    import onnx

    from conftest import QUICK, compose_config
    from train import train

    overrides = ["data=synthetic", "model.name=cifar_resnet20", "logger=none", *QUICK, "trainer.max_epochs=1",
                 "test=false", "quant=qat"]
    checkpoint = train(compose_config(overrides, tmp_path))["last_checkpoint"]
    assert main(["export", checkpoint, "-o", str(tmp_path / "cli.onnx")]) == 0
    assert "QDQ (INT8)" in capsys.readouterr().out
    assert sum(node.op_type == "QuantizeLinear" for node in onnx.load(tmp_path / "cli.onnx").graph.node) == 34
    assert main(["export", str(tmp_path / "missing.ckpt"), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_compile_inspect_run_and_bench_a_qdq_file(tmp_path, capsys):
    import numpy as np
    import torch

    from conftest import calibrated_network
    from lightning_edge.export import to_onnx

    onnx_path = to_onnx(calibrated_network(), torch.zeros(1, 1, 28, 28), str(tmp_path / "model.onnx"))
    assert main(["compile", onnx_path, "--tune-batch", "2"]) == 0
    assert "9 with a folded residual add" in capsys.readouterr().out
    edge = str(tmp_path / "model.edge")
    assert main(["inspect", edge]) == 0
    table = capsys.readouterr().out
    assert "Conv+Add" in table and "gemm_b" in table and "kernels timed at batch 2" in table
    assert main(["inspect", edge, "--json"]) == 0
    layers = json.loads(capsys.readouterr().out)["layers"]
    assert sum(layer["macs"] for layer in layers) > 30e6 and layers[-1]["op"] == "dequantize"
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", edge, "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy"), "--top", "2"]) == 0
    assert len(capsys.readouterr().out.split("\n")) == 4 and np.load(tmp_path / "y.npy").shape == (3, 10)
    # The pool's policy and the batch groups change no number.
    assert main(["run", edge, "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "z.npy"), "--threads", "2",
                 "--cpu-policy", "shared", "--batch-group", "1"]) == 0
    assert np.array_equal(np.load(tmp_path / "z.npy"), np.load(tmp_path / "y.npy"))
    capsys.readouterr()
    assert main(["bench", edge, "--onnx", onnx_path, "--batch", "1", "--rounds", "1", "--threads", "1"]) == 0
    assert "speed-up" in capsys.readouterr().out
    assert main(["run", str(tmp_path / "x.npy"), "--input", str(tmp_path / "x.npy")]) == 2
    assert "not a .edge file" in capsys.readouterr().err


def test_prune_plan_shows_coupled_groups_and_the_widths_a_mac_target_leaves(capsys):
    assert main(["prune-plan", "cifar_resnet20", "--in-chans", "1", "--image-size", "28", "--macs", "0.4", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    groups = {group["group"]: group for group in plan["groups"]}
    assert groups["conv1"]["channels"] == 16 and "layer1.2.conv2" in groups["conv1"]["layers"]  # the residual stream
    assert groups["fc"]["pinned"] == "the network's output" and groups["fc"]["kept"] == 10
    assert plan["macs_after"] <= 0.6 * plan["macs_before"] == 0.6 * 31_021_952
    assert main(["prune-plan", "cifar_resnet20", "--in-chans", "1", "--image-size", "28"]) == 0
    assert "12 prunable" in capsys.readouterr().out
