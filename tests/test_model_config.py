"""config.json validation: every key ModelConfig reads is type- and range-checked, and a bad one is one InputError
naming the file and the key, through every entry point (load_pretrained, checkpoint_summary, `model-info`)."""

import json
import shutil

import jax
import pytest

from reasonrank_jax.cli import main as cli_main
from reasonrank_jax.errors import InputError
from reasonrank_jax.models import ModelConfig, load_pretrained, save_pretrained
from reasonrank_jax.models.hf_io import checkpoint_summary
from reasonrank_jax.models.transformer import init_params

ABSENT = object()  # a table value: remove the key from config.json

# (changes to a valid qwen3 config.json, the key the error must name)
BAD_CONFIGS = [
    ({"hidden_size": "abc"}, "hidden_size"),
    ({"hidden_size": [64]}, "hidden_size"),
    ({"hidden_size": True}, "hidden_size"),
    ({"hidden_size": 32.5}, "hidden_size"),
    ({"hidden_size": 32.0}, "hidden_size"),  # transformers refuses a float for an int field too
    ({"hidden_size": ABSENT}, "hidden_size"),
    ({"hidden_size": 34, "head_dim": ABSENT}, "hidden_size"),  # 34 / 4 heads: no exact head_dim
    ({"num_attention_heads": 0}, "num_attention_heads"),
    ({"num_hidden_layers": -1}, "num_hidden_layers"),
    ({"num_hidden_layers": 0}, "num_hidden_layers"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),  # does not divide 4 heads
    ({"num_key_value_heads": 0}, "num_key_value_heads"),
    ({"head_dim": 0}, "head_dim"),
    ({"head_dim": 7}, "head_dim"),  # odd: rotary embeddings need pairs
    ({"head_dim": "8"}, "head_dim"),
    ({"intermediate_size": -48}, "intermediate_size"),
    ({"vocab_size": 0}, "vocab_size"),
    ({"vocab_size": 1.5}, "vocab_size"),
    ({"max_position_embeddings": 0}, "max_position_embeddings"),
    ({"rms_norm_eps": 0}, "rms_norm_eps"),
    ({"rms_norm_eps": "1e-6"}, "rms_norm_eps"),
    ({"rms_norm_eps": float("nan")}, "rms_norm_eps"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 0}}, "rope_parameters.rope_theta"),
    ({"rope_parameters": ABSENT, "rope_scaling": ABSENT, "rope_theta": -1.0}, "rope_theta"),
    ({"rope_parameters": ABSENT, "rope_scaling": ABSENT, "rope_theta": float("inf")}, "rope_theta"),
    ({"rope_parameters": "default"}, "rope_parameters"),
    ({"rope_parameters": {"rope_type": "linear", "factor": 0}}, "rope_parameters.factor"),
    ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0,
                          "original_max_position_embeddings": 64}}, "rope_parameters.high_freq_factor"),
    ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 64.5}},
     "rope_parameters.original_max_position_embeddings"),
    ({"rope_parameters": ABSENT, "rope_scaling": {"type": "linear"}}, "rope_scaling.factor"),
    ({"tie_word_embeddings": "false"}, "tie_word_embeddings"),
    ({"tie_word_embeddings": 1}, "tie_word_embeddings"),
    ({"attention_bias": "no"}, "attention_bias"),
    ({"use_sliding_window": "false"}, "use_sliding_window"),
    ({"mlp_bias": 0}, "mlp_bias"),
    ({"layer_types": "full_attention"}, "layer_types"),
    ({"torch_dtype": 16}, "torch_dtype"),
    ({"model_type": ABSENT}, "model_type"),
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = ModelConfig(model_type="qwen3", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=8, intermediate_size=48, max_position_embeddings=128, qk_norm=True)
    path = tmp_path_factory.mktemp("ckpt") / "ckpt"
    save_pretrained(cfg, init_params(cfg, jax.random.PRNGKey(0)), path)
    return path


@pytest.fixture()
def edit_config(checkpoint, tmp_path):
    """A copy of the valid checkpoint with config.json changed; returns (directory, config.json path)."""
    def edit(changes):
        model_dir = tmp_path / "model"
        shutil.copytree(checkpoint, model_dir)
        config_path = model_dir / "config.json"
        hf = json.loads(config_path.read_text())
        for key, value in changes.items():
            if value is ABSENT:
                hf.pop(key, None)
            else:
                hf[key] = value
        config_path.write_text(json.dumps(hf))
        return model_dir, config_path
    return edit


def test_valid_checkpoint_loads(checkpoint):
    cfg, _ = load_pretrained(checkpoint)
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim) == (32, 2, 2, 8)
    assert checkpoint_summary(checkpoint)["config"] == cfg


def test_null_or_absent_optional_keys_take_the_transformers_defaults(edit_config):
    model_dir, _ = edit_config({"num_key_value_heads": None, "head_dim": ABSENT, "tie_word_embeddings": None,
                                "rms_norm_eps": ABSENT, "rope_parameters": ABSENT, "rope_scaling": None,
                                "rope_theta": 500000})
    cfg = checkpoint_summary(model_dir)["config"]
    assert (cfg.num_kv_heads, cfg.head_dim, cfg.tie_word_embeddings) == (4, 8, False)
    assert (cfg.rms_norm_eps, cfg.rope_theta, cfg.rope_scaling) == (1e-6, 500000.0, None)


@pytest.mark.parametrize("reader", [load_pretrained, checkpoint_summary], ids=["load_pretrained", "summary"])
@pytest.mark.parametrize("changes,key", BAD_CONFIGS, ids=[f"{key}-{i}" for i, (_, key) in enumerate(BAD_CONFIGS)])
def test_bad_value_names_file_and_key(edit_config, reader, changes, key):
    model_dir, config_path = edit_config(changes)
    with pytest.raises(InputError) as err:
        reader(model_dir)
    assert str(err.value).startswith(f"{config_path} [{key}]: "), str(err.value)
    assert err.value.field == key


@pytest.mark.parametrize("content,message", [
    (None, "not found"), ("{not json", "not valid JSON"), ("[64]", "expected a JSON object"),
    (b"\xff\xfe{}", "not valid JSON"),
], ids=["missing", "not-json", "not-object", "not-utf8"])
@pytest.mark.parametrize("reader", [load_pretrained, checkpoint_summary], ids=["load_pretrained", "summary"])
def test_unreadable_config_json_names_the_file(edit_config, reader, content, message):
    model_dir, config_path = edit_config({})
    if content is None:
        config_path.unlink()
    elif isinstance(content, bytes):
        config_path.write_bytes(content)
    else:
        config_path.write_text(content)
    with pytest.raises(InputError, match=message) as err:
        reader(model_dir)
    assert str(err.value).startswith(str(config_path))


def test_config_json_that_is_a_directory_is_not_found(edit_config):
    model_dir, config_path = edit_config({})
    config_path.unlink()
    config_path.mkdir()
    with pytest.raises(InputError, match="not found"):
        checkpoint_summary(model_dir)


@pytest.mark.parametrize("changes", [{"num_hidden_layers": -1}, {"hidden_size": "abc"}, {"num_attention_heads": 0}],
                         ids=["layers=-1", "hidden=abc", "heads=0"])
def test_model_info_exits_2_with_one_line(edit_config, capsys, changes):
    model_dir, config_path = edit_config(changes)
    assert cli_main(["model-info", str(model_dir)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and str(config_path) in lines[0] and f"[{next(iter(changes))}]" in lines[0]
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("field,value", [("num_layers", 0), ("num_kv_heads", 0), ("head_dim", 8.0),
                                         ("vocab_size", True)])
def test_direct_construction_rejects_bad_sizes(field, value):
    sizes = dict(model_type="qwen3", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                 head_dim=8, intermediate_size=48)
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{**sizes, field: value})
