"""Whole runs against PyTorch (perf/twin.py, the short version of `python -m xlit_jax.perf.torch_twin`):
the tiny preset's runs of test_train_loop (8 updates of packed chats, whose step programs that module leaves in
the session's compilation cache), full fine-tuning and LoRA, from the same weights on the same batches. Every
update's loss, gradient norm and params' norm, and the final trainable tensors, agree within fp32 rounding."""

import pytest

from xlit_jax.perf import twin

from support import OVERRIDES, tiny_config, write_chats


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    return write_chats(tmp_path_factory.mktemp("data") / "chats.en.jsonl")


@pytest.mark.slow  # CI runs it; make test keeps the one-step parity (test_train_torch_parity.py)
@pytest.mark.parametrize("lora_rank", [0, 4])
def test_whole_runs_match_pytorch(chats, lora_rank, tmp_path):
    steps = OVERRIDES["train.max_steps"]
    result = twin.run(tiny_config(chats, **{"lora.rank": lora_rank}), steps)
    print(twin.write(result, tmp_path, "tiny"))
    assert len((tmp_path / "updates.jsonl").read_text().splitlines()) == 2 * steps
    assert (tmp_path / "curves.png").stat().st_size and (tmp_path / "diffs.md").is_file()
    assert all(result["diffs"][q]["max"] <= 1e-5 for q in twin.QUANTITIES), result["diffs"]
    assert result["params"]["final"]["max"] <= 1e-5, result["params"]
