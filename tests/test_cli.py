"""The sparse-llm command line end to end on a tiny model saved to a temporary folder."""

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers import models as tokenizer_models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from sparse_llm import cli
from sparse_llm.models import load_model


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with no merges: 256 tokens, one per byte."""
    vocab = {char: index for index, char in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    tokenizer = Tokenizer(tokenizer_models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, max_position_embeddings=64)  # fmt: skip
    folder = tmp_path / "tiny"
    LlamaForCausalLM(config).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(" ".join(f"word{i % 37} and more text {i}" for i in range(300)))
    return path


def test_prune_then_eval_end_to_end(tiny_folder, text_file, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["prune", "--model", str(tiny_folder), "--method", "sparsegpt", "--sparsity", "2:4",
                     "--nsamples", "4", "--seqlen", "32", "--dataset", str(text_file), "--eval-windows", "3",
                     "--device", "cpu", "--out", str(out)])  # fmt: skip
    assert code == 0
    report = json.loads((out / "prune_report.json").read_text())
    assert report["prune"]["method"] == "sparsegpt" and report["prune"]["nm_exact"]
    assert len(report["prune"]["layers"]) == 14
    assert all(layer["mask_sparsity"] == 0.5 for layer in report["prune"]["layers"])
    assert report["prune"]["calibration"] == {"windows": 4, "seqlen": 32, "batch_size": 1}
    assert report["eval"]["windows"] == 3 and report["eval"]["seqlen"] == 32
    assert {"torch", "transformers", "sparse_llm"} <= set(report["versions"])
    assert set(report["prune"]["timings"]) >= {"forward_s", "statistics_s", "update_s"}

    model, _ = load_model(out)
    up = model.model.layers[1].mlp.up_proj.weight
    assert ((up != 0).reshape(up.shape[0], -1, 4).sum(-1) == 2).all()

    capsys.readouterr()
    result = tmp_path / "eval.json"
    code = cli.main(["eval", "--model", str(out), "--dataset", str(text_file), "--seqlen", "32",
                     "--eval-windows", "3", "--json", str(result)])  # fmt: skip
    assert code == 0
    evaluated = json.loads(result.read_text())
    assert evaluated["eval"]["perplexity"] == pytest.approx(report["eval"]["perplexity"], rel=1e-5)
    assert evaluated["sparsity"]["all_2to4"] and evaluated["sparsity"]["overall"] == pytest.approx(0.5)
    assert "perplexity" in capsys.readouterr().out


def test_errors_exit_nonzero_with_a_message(tiny_folder, tmp_path, capsys):
    assert cli.main(["prune", "--model", str(tmp_path / "absent"), "--method", "wanda"]) == 1
    assert "no config.json" in capsys.readouterr().err
    assert cli.main(["prune", "--model", str(tiny_folder), "--method", "magnitude", "--sparsity", "1.5"]) == 1
    assert "(0, 1)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["prune", "--model", str(tiny_folder), "--method", "obs"])


def test_a_registered_subcommand_needs_one_function_and_one_line(monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", dict(cli.COMMANDS))

    def hello(args):
        print(f"hello {args.name}")

    cli.register("say hello", hello, lambda p: p.add_argument("--name", default="x"), "greets")
    assert cli.main(["say", "hello", "--name", "sparse"]) == 0
    assert capsys.readouterr().out == "hello sparse\n"
    assert cli.main([]) == 2  # no subcommand: usage, exit code 2
    cli.register("say bye", hello, None, "leaves")
    top_help = cli.build_parser().format_help()
    assert "bye, hello (see say -h)" in top_help  # a group's help names its subcommands


def test_demo_prints_the_table(tiny_folder, text_file, monkeypatch, capsys):
    # The demo's own logic on a tiny model (the embedded model is covered by the slow test of test_prune.py).
    from sparse_llm import models

    monkeypatch.setattr(models, "load_default_model", lambda: load_model(tiny_folder))
    code = cli.main(["demo", "--nsamples", "4", "--seqlen", "32", "--eval-windows", "2", "--batch-size", "2",
                     "--dataset", str(text_file)])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    for method in ("dense", "magnitude", "wanda", "sparsegpt"):
        assert f"\n{method} " in out
    assert out.count("0.500 zeros, OK") == 3 and "FAILED" not in out
    assert "layer speedup" in out


def test_gpu_subcommands_are_registered_and_say_why_they_cannot_run_without_cuda(capsys):
    import torch

    main = cli.main
    if torch.cuda.is_available():
        pytest.skip("this checks the message on a machine without CUDA")
    assert main(["tune", "--shapes", "4096x4096"]) == 1
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert main(["tune", "--shapes", "4096x4096", "--no-weigh-stream"]) == 1
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert main(["bench", "layers", "--quick"]) == 1
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert main(["tune", "--shapes", "4096by4096"]) == 1
    assert "is not NxK" in capsys.readouterr().err
    assert main(["tune", "--shapes", "4096x4096", "--ms", "1000"]) == 1
    assert "powers of two" in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "weigh"), [([], True), (["--weigh-stream"], True), (["--no-weigh-stream"], False)])
def test_tune_weighs_the_stream_unless_told_not_to(monkeypatch, flag, weigh):
    from sparse_llm import tune

    seen = []
    monkeypatch.setattr(tune, "tune", lambda shapes, dtype, ms, weigh_stream: seen.append(weigh_stream) or [])
    assert cli.main(["tune", "--shapes", "1024x4096", *flag]) == 0
    assert seen == [weigh]


def test_tune_prints_the_merged_entry_the_dispatch_reads(monkeypatch, tmp_path, capsys):
    import json

    import torch

    from sparse_llm import tune

    monkeypatch.setenv("SPARSE_LLM_CACHE", str(tmp_path))
    key = tune.entry_key("GPU", 1024, 4096, torch.bfloat16)
    old = {"1": "sparse_mma", "2048": "sparse_mma"}

    def fake_tune(shapes, dtype, ms, weigh_stream):  # a run of --ms 512 over an entry tuned before
        new = {"gpu": "GPU", "n": 1024, "k": 4096, "backends": {"512": "cusparselt"}}
        tune.cache_path().write_text(json.dumps({key: {**new, "backends": {**old, **new["backends"]}}}))
        tune._table.cache_clear()
        return [new]

    monkeypatch.setattr(tune, "tune", fake_tune)
    assert cli.main(["tune", "--shapes", "1024x4096", "--ms", "512"]) == 0
    out = capsys.readouterr().out
    assert "1024x4096: M<=1: sparse_mma, M<=512: cusparselt, M<=2048: sparse_mma; cuSPARSELt above M = 2048" in out
