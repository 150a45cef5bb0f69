"""``mkeval export --format hf``: transformers loads each model with mkeval's logits and tokenizer."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from checkpoint_helpers import TEXT, fitted_tokenizer, make_checkpoint

import mkeval
from mkeval.interop.export import export_checkpoint

EXPORTED_CLASS = {"transformer": "GPT2LMHeadModel", "mamba": "MambaForCausalLM", "bk": "BKForCausalLM"}


@pytest.fixture(scope="module")
def bpe():
    return fitted_tokenizer("bpe:400")


@pytest.mark.parametrize("name", ["transformer", "mamba", "bk"])
def test_transformers_gives_mkeval_logits_and_ids(tmp_path, bpe, name):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint, model = make_checkpoint(tmp_path / "ck", name, bpe, steps=6)
    out = export_checkpoint(checkpoint, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == EXPORTED_CLASS[name]
    ids = torch.tensor([bpe.encode(" ".join(TEXT))[:32], bpe.encode(" ".join(TEXT[3:]))[:32]])
    with torch.no_grad():
        ours, theirs = model.eval()(ids), hf(input_ids=ids).logits
    assert (ours - theirs).abs().max() < 1e-5
    auto = AutoTokenizer.from_pretrained(out)
    assert all(auto(line, add_special_tokens=False)["input_ids"] == bpe.encode(line) for line in TEXT)
    assert auto.eos_token_id == hf.config.eos_token_id == bpe.eos_id
    assert (out / "mkeval_identity.json").is_file()


def test_square_c_proj_must_be_transposed(tmp_path):
    """attn.c_proj is square, so loading it untransposed raises nothing: only the logits tell."""
    from transformers import GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D

    tok = fitted_tokenizer("byte")
    _, model = make_checkpoint(tmp_path / "ck", "transformer", tok, steps=6)
    weight = model.gpt.transformer.h[0].attn.c_proj.weight
    assert weight.shape[0] == weight.shape[1] and not torch.allclose(weight, weight.T)
    naive = GPT2LMHeadModel(model.gpt.config)  # every Conv1D transposed except the square c_proj
    state = {}
    for key, value in model.gpt.state_dict().items():
        module = naive.get_submodule(key.rpartition(".")[0])
        square = key.endswith("attn.c_proj.weight")
        state[key] = value.T if isinstance(module, Conv1D) and key.endswith("weight") and not square else value
    naive.load_state_dict(state, strict=False)
    ids = torch.tensor([tok.encode(TEXT[0])[:32]])
    with torch.no_grad():
        assert (naive.eval()(ids).logits - model(ids)).abs().max() > 1e-3  # the equality test would catch it
        from mkeval_transformer import to_transformers

        assert (to_transformers(model)(ids).logits - model(ids)).abs().max() < 1e-5


def test_bk_loads_after_import_mkeval_alone(tmp_path, bpe):
    checkpoint, model = make_checkpoint(tmp_path / "ck", "bk", bpe, steps=2)
    out = export_checkpoint(checkpoint, tmp_path / "hf")
    ids = bpe.encode(TEXT[0])[:16]
    with torch.no_grad():
        expected = model(torch.tensor([ids]))
    torch.save(expected, tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import sys
        import mkeval
        assert "torch" not in sys.modules and "transformers" not in sys.modules, "import mkeval is not light"
        from transformers import AutoModelForCausalLM
        import torch
        model = AutoModelForCausalLM.from_pretrained({str(out)!r}).eval()
        with torch.no_grad():
            logits = model(torch.tensor([{ids!r}])).logits
        assert (logits - torch.load({str(tmp_path / "expected.pt")!r})).abs().max() < 1e-5
        print("ok", type(model).__name__)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ok BKForCausalLM" in run.stdout


def test_import_mkeval_stays_light():
    run = subprocess.run([sys.executable, "-X", "importtime", "-c", "import mkeval"], capture_output=True, text=True,
                         timeout=120)
    modules = {line.split("|")[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    assert "mkeval.interop.hf_registration" in modules
    assert not {m for m in modules if m.split(".")[0] in ("torch", "transformers")}


def test_model_without_export_is_named(tmp_path, registry):
    from helpers import bigram_spec

    from mkeval.engine.checkpoint import write_checkpoint

    registry.add(bigram_spec())
    tok = fitted_tokenizer("byte")
    model = mkeval.build_model("bigram", 256, 16, seed=0, registry=registry)
    write_checkpoint(tmp_path / "ck", model, name="bigram", vocab_size=256, max_seq_len=16, tokenizer=tok,
                     registry=registry)
    with pytest.raises(mkeval.UsageError, match="model 'bigram'.*no transformers export"):
        export_checkpoint(tmp_path / "ck", tmp_path / "hf", registry=registry)


def test_cli_export(tmp_path, capsys):
    from mkeval.cli import main

    tok = fitted_tokenizer("byte")
    checkpoint, _ = make_checkpoint(tmp_path / "ck", "mamba", tok, steps=1)
    (checkpoint / "training_state.pt").write_bytes(b"resume state: not part of an export")
    assert main(["export", str(checkpoint), "--format", "hf", "--output", str(tmp_path / "hf")]) == 0
    assert {p.name for p in (tmp_path / "hf").iterdir()} == {
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "mkeval_identity.json"}
    assert main(["export", str(checkpoint), "--output", str(tmp_path / "hf")]) == 2  # not empty
    assert "not empty" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), "--output", str(tmp_path / "hf2")]) == 2
