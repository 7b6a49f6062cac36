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
