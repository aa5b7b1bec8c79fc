"""``ethostral models pull``: what goes where and what it prints. The hub is replaced
by a fake that copies local folders (no network here); downloading is the hub's job."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ethostral_serve.cli import main


@pytest.fixture
def fake_hub(tmp_path, monkeypatch) -> list[dict]:
    hub = tmp_path / "hub"
    for repo in ("org/voxtral", "org/adapter", "pyannote/speaker-diarization-community-1"):
        (hub / repo).mkdir(parents=True)
        (hub / repo / "config.json").write_text(repo)
    calls: list[dict] = []

    def snapshot_download(repo_id, local_dir, revision=None, token=None):
        calls.append({"repo_id": repo_id, "revision": revision, "token": token})
        if not (hub / repo_id).is_dir():
            raise OSError(f"404 for {repo_id}")
        shutil.copytree(hub / repo_id, local_dir, dirs_exist_ok=True)
        return str(local_dir)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    return calls


def test_pull_puts_each_model_in_its_folder_and_prints_the_settings(
    tmp_path, fake_hub, capsys
) -> None:
    out = tmp_path / "models"
    code = main(
        ["models", "pull", "--dir", str(out), "--base", "org/voxtral", "--adapter", "org/adapter"]
    )
    assert code == 0
    assert (out / "voxtral" / "config.json").read_text() == "org/voxtral"
    assert (out / "adapter" / "config.json").read_text() == "org/adapter"
    assert (out / "pyannote" / "config.json").exists()  # the setting's default pipeline
    assert {c["token"] for c in fake_hub} == {"hf_test"}
    printed = capsys.readouterr().out
    assert "ETHOSTRAL_SPEECH_MODEL=ethostral" in printed
    assert "ETHOSTRAL_DIARIZER__BACKEND=pyannote" in printed
    assert f"ETHOSTRAL_ETHOSTRAL__BASE_MODEL={(out / 'voxtral').resolve()}" in printed
    assert f"ETHOSTRAL_ETHOSTRAL__ADAPTER={(out / 'adapter').resolve()}" in printed
    assert f"ETHOSTRAL_DIARIZER__PYANNOTE_PIPELINE={(out / 'pyannote').resolve()}" in printed


def test_pull_without_pyannote_and_with_a_revision(tmp_path, fake_hub, capsys) -> None:
    code = main(
        [
            "models", "pull", "--dir", str(tmp_path / "m"), "--base", "org/voxtral",
            "--no-pyannote", "--revision", "v1",
        ]
    )  # fmt: skip
    assert code == 0
    assert [(c["repo_id"], c["revision"]) for c in fake_hub] == [("org/voxtral", "v1")]
    assert "DIARIZER" not in capsys.readouterr().out


def test_a_failed_download_says_which_and_why(tmp_path, fake_hub, capsys) -> None:
    code = main(["models", "pull", "--dir", str(tmp_path / "m"), "--base", "org/missing"])
    assert code == 1
    err = capsys.readouterr().err
    assert "could not download 'org/missing'" in err and "404" in err and "HF_TOKEN" in err
    assert not Path(tmp_path / "m" / "pyannote").exists()  # stopped at the first failure
