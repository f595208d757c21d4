"""Config schema, YAML loading, --set overrides and CLI error reporting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mtcli.config import load_config
from mtcli.errors import MtcliError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


BASE = """
name: t
data:
  src_lang: en
  tgt_lang: de
  train: {type: pair, src: a.en, tgt: a.de}
"""


def test_defaults_and_float_parsing(tmp_path):
    cfg = load_config(write(tmp_path, BASE + "train: {lr: 5e-4, max_time: 30m}\n"))
    assert cfg.train.lr == pytest.approx(5e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.max_time == 1800.0
    assert cfg.model.norm == "pre" and cfg.run_path == Path("runs/t")


@pytest.mark.parametrize(
    "extra, needle",
    [
        ("model: {nrom: post}\n", "model.nrom: unknown key"),
        ("model: {norm: middle}\n", "model.norm: expected 'post', 'pre', 'deepnorm' or 'none'"),
        ("model: {d_model: big}\n", "model.d_model"),
        ("bogus: 1\n", "bogus: unknown key"),
        ("model: {d_model: 30, n_heads: 4}\n", "divisible"),
    ],
)
def test_bad_configs_name_file_and_key(tmp_path, extra, needle):
    path = write(tmp_path, BASE + extra)
    with pytest.raises(MtcliError) as err:
        load_config(path)
    assert needle in str(err.value) and str(path) in str(err.value)


def test_bad_source_field(tmp_path):
    text = BASE.replace("src: a.en", "source: a.en")
    with pytest.raises(MtcliError, match=r"data\.train\.(source|src)"):
        load_config(write(tmp_path, text))


def test_overrides_nested_lists_and_types(tmp_path):
    cfg = load_config(
        write(tmp_path, BASE),
        ["model.norm=post", "train.betas=[0.9, 0.997]", "train.lr=1e-3",
         "data.filters.max_ratio=2.5", "decode.beam_size=4", "data.valid={type: tsv, path: v.tsv}"],
    )
    assert cfg.model.norm == "post"
    assert cfg.train.betas == (0.9, 0.997)
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.data.filters.max_ratio == 2.5 and cfg.decode.beam_size == 4
    assert cfg.data.valid.type == "tsv" and cfg.data.valid.columns == (0, 1)


def test_override_errors(tmp_path):
    path = write(tmp_path, BASE)
    with pytest.raises(MtcliError, match="KEY=VALUE"):
        load_config(path, ["model.norm"])
    with pytest.raises(MtcliError, match="not a section"):
        load_config(path, ["name.x=1"])
    with pytest.raises(MtcliError, match="model.n_heads"):
        load_config(path, ["model.n_heads=many"])


def test_data_root_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("MTCLI_DATA", "/corpora")
    cfg = load_config(write(tmp_path, BASE.replace("src: a.en", "src: '${MTCLI_DATA}/a.en'")))
    assert cfg.data.train.src == "/corpora/a.en"


def test_shipped_configs_validate():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.name


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "mtcli", *args], capture_output=True, text=True,
                          cwd=kw.get("cwd", REPO))


def test_cli_config_show_and_errors(tmp_path):
    path = write(tmp_path, BASE)
    ok = run_cli("config", "show", str(path), "--set", "model.norm=deepnorm")
    assert ok.returncode == 0, ok.stderr
    shown = yaml.safe_load(ok.stdout)
    assert shown["model"]["norm"] == "deepnorm" and shown["train"]["warmup_steps"] == 4000

    bad = run_cli("config", "show", str(path), "--set", "model.norm=sideways")
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "model.norm" in lines[0]
    assert "Traceback" not in bad.stderr

    missing = run_cli("config", "show", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr

    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    broken = run_cli("config", "show", str(tmp_path / "broken.yaml"))
    assert broken.returncode == 2 and "broken.yaml" in broken.stderr and "line" in broken.stderr


def test_help_does_not_import_torch():
    code = "import sys; from mtcli.cli import app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False"
