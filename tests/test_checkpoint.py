"""Self-contained checkpoint directories: layout, round trips, tokenizers, and the errors they raise."""

import json

import pytest
import torch
from checkpoint_helpers import TEXT, fitted_tokenizer, make_checkpoint
from conftest import shared_data_or_skip

import mkeval
from mkeval.engine.checkpoint import (CONFIG, IDENTITY, TOKENIZER, TOKENIZER_CONFIG, WEIGHTS, byte_to_unicode,
                               load_tokenizer, save_weights, weights_file, write_checkpoint)


@pytest.mark.parametrize("name", ["transformer", "mamba", "bk"])
def test_round_trip_gives_the_same_model(tmp_path, name):
    tok = fitted_tokenizer("word")
    directory, model = make_checkpoint(tmp_path / "ck", name, tok, steps=3)
    assert {p.name for p in directory.iterdir()} == {WEIGHTS, CONFIG, TOKENIZER, TOKENIZER_CONFIG, IDENTITY}
    loaded, loaded_tok = mkeval.load_checkpoint(directory)
    assert not loaded.training
    ids = torch.tensor([tok.encode(TEXT[0] + " " + TEXT[3])[:32]])
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
        assert loaded(ids).shape == (1, ids.shape[1], tok.vocab_size)
    config = json.loads((directory / CONFIG).read_text())
    assert config["model"] == name and config["size"] == "tiny" and config["max_seq_len"] == 32
    assert config["plugin"] == name and config["distribution"] == "mkeval" and config["causal"] is True
    assert config["vocab_size"] == tok.vocab_size
    assert json.loads((directory / IDENTITY).read_text())["name"] == f"{name}-test"
    assert loaded_tok.fingerprint == tok.fingerprint


def test_build_options_are_recorded_and_used(tmp_path):
    tok = fitted_tokenizer("byte")
    directory, model = make_checkpoint(tmp_path / "ck", "transformer", tok, steps=1, n_layer=1, n_embd=32)
    loaded, _ = mkeval.load_checkpoint(directory)
    assert json.loads((directory / CONFIG).read_text())["options"] == {"n_layer": 1, "n_embd": 32}
    assert len(loaded.gpt.transformer.h) == 1 and loaded.gpt.config.n_embd == 32


@pytest.mark.parametrize("spec", ["word", "byte", "bpe:600"])
def test_tokenizer_json_encodes_real_text_like_the_original(tmp_path, spec):
    from tokenizers import Tokenizer as HFTokenizer

    data = shared_data_or_skip()
    valid = (data / "wikitext-2" / "valid.txt").read_text(encoding="utf-8").split("\n")
    test = (data / "wikitext-2" / "test.txt").read_text(encoding="utf-8").split("\n")[:400]
    tok = fitted_tokenizer(spec, valid[:1500])
    model = mkeval.build_model("bk", tok.vocab_size, 16, seed=0)
    write_checkpoint(tmp_path, model, name="bk", vocab_size=tok.vocab_size, max_seq_len=16, tokenizer=tok)
    rebuilt = load_tokenizer(tmp_path)
    lines = valid[1500:1900] + test + ["x<eos>y <unk>s ( <unk> ) héllo wörld ≈ 日本 \t tab", ""]
    assert all(rebuilt.encode(line) == tok.encode(line) for line in lines)
    assert (rebuilt.name, rebuilt.vocab_size, rebuilt.eos_id, rebuilt.fingerprint) == \
        (tok.name, tok.vocab_size, tok.eos_id, tok.fingerprint)
    # the same file read by the tokenizers library itself gives the same ids
    plain = HFTokenizer.from_file(str(tmp_path / TOKENIZER))
    assert all(plain.encode(line).ids == tok.encode(line) for line in lines)
    # ... and so does transformers, from the checkpoint directory
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(tmp_path)
    assert auto.eos_token_id == tok.eos_id
    assert all(auto(line, add_special_tokens=False)["input_ids"] == tok.encode(line) for line in lines)


def test_byte_tokenizer_json_ids_are_utf8_bytes(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import pre_tokenizers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    assert byte_to_unicode() == bytes_to_unicode()  # GPT-2's table, as transformers has it
    assert sorted(byte_to_unicode().values()) == sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = fitted_tokenizer("byte")
    write_checkpoint(tmp_path, mkeval.build_model("bk", 256, 8, seed=0), name="bk", vocab_size=256, max_seq_len=8,
                     tokenizer=tok)
    plain = HFTokenizer.from_file(str(tmp_path / TOKENIZER))
    text = "".join(map(chr, range(1, 0x250))) + " 日本語 😀"
    assert plain.encode(text).ids == list(text.encode("utf-8"))
    assert plain.decode(list(text.encode("utf-8")), skip_special_tokens=False) == text


def test_local_hugging_face_tokenizer_is_copied(tmp_path):
    from transformers import PreTrainedTokenizerFast

    from mkeval.engine.checkpoint import tokenizers_object

    folder = tmp_path / "hf-tok"
    bpe = fitted_tokenizer("bpe:400")
    PreTrainedTokenizerFast(tokenizer_object=tokenizers_object(bpe), eos_token="<eos>").save_pretrained(folder)
    from mkeval.data.tokenizers import make_tokenizer

    tok = make_tokenizer(str(folder))
    directory, _ = make_checkpoint(tmp_path / "ck", "bk", tok, steps=1)
    assert (directory / TOKENIZER).is_file()
    _, rebuilt = mkeval.load_checkpoint(directory)
    assert rebuilt.name == tok.name and rebuilt.eos_id == tok.eos_id
    assert all(rebuilt.encode(line) == tok.encode(line) == bpe.encode(line) for line in TEXT)


def test_token_id_data_has_no_tokenizer(tmp_path):
    model = mkeval.build_model("transformer", 50, 16, seed=0)
    write_checkpoint(tmp_path, model, name="transformer", vocab_size=50, max_seq_len=16, tokenizer=None,
                     identity={"name": "synthetic"})
    assert not (tmp_path / TOKENIZER).exists()
    loaded, tok = mkeval.load_checkpoint(tmp_path)
    assert tok is None
    ids = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model.eval()(ids))


def test_save_weights_replaces_only_the_weights(tmp_path):
    tok = fitted_tokenizer("byte")
    model = mkeval.build_model("transformer", 256, 16, seed=0)
    write_checkpoint(tmp_path, model, name="transformer", vocab_size=256, max_seq_len=16, tokenizer=tok,
                     weights=False)
    assert not (tmp_path / WEIGHTS).exists()
    config_before = (tmp_path / CONFIG).read_bytes()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    save_weights(tmp_path, model)
    loaded, _ = mkeval.load_checkpoint(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert (tmp_path / CONFIG).read_bytes() == config_before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp file left


def test_weights_file_accepts_old_bare_files(tmp_path):
    old = tmp_path / "cell.safetensors"
    old.write_bytes(b"")
    assert weights_file(old) == old
    assert weights_file(tmp_path / "cell") == tmp_path / "cell" / WEIGHTS


def test_broken_checkpoints_say_what_is_wrong_and_where(tmp_path):
    with pytest.raises(mkeval.UsageError, match="not a directory"):
        mkeval.load_checkpoint(tmp_path / "absent")
    with pytest.raises(mkeval.UsageError, match="no config.json"):
        mkeval.load_checkpoint(tmp_path)
    tok = fitted_tokenizer("byte")
    model = mkeval.build_model("transformer", 256, 16, seed=0)
    write_checkpoint(tmp_path, model, name="transformer", vocab_size=256, max_seq_len=16, tokenizer=tok,
                     weights=False)
    with pytest.raises(mkeval.UsageError, match="no model.safetensors"):
        mkeval.load_checkpoint(tmp_path)
    save_weights(tmp_path, model)
    config = json.loads((tmp_path / CONFIG).read_text())

    (tmp_path / CONFIG).write_text(json.dumps({**config, "model": "transformr"}))
    with pytest.raises(mkeval.UsageError, match=r"config\.json.*unknown model 'transformr'.*did you mean 'transformer'"):
        mkeval.load_checkpoint(tmp_path)
    (tmp_path / CONFIG).write_text(json.dumps({**config, "vocab_size": 300}))
    with pytest.raises(mkeval.UsageError, match=r"model\.safetensors.*do not fit"):
        mkeval.load_checkpoint(tmp_path)
    (tmp_path / CONFIG).write_text(json.dumps({k: v for k, v in config.items() if k != "max_seq_len"}))
    with pytest.raises(mkeval.UsageError, match="missing max_seq_len"):
        mkeval.load_checkpoint(tmp_path)
    (tmp_path / CONFIG).write_text(json.dumps(config))
    (tmp_path / TOKENIZER).unlink()
    with pytest.raises(mkeval.UsageError, match="no tokenizer.json"):
        mkeval.load_checkpoint(tmp_path)
