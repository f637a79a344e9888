"""The checkpoint layer (xlit_jax/io/checkpoints/) on tiny trees in a tmp dir, without a training run: save
and restore, a damaged newest step set aside, overwritten bytes caught by the checksums, and how the
processes of a run agree. tests/train/test_train_loop.py runs the same through training, on one and two processes."""

import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xlit_jax.errors import UserError
from xlit_jax.io.checkpoints import Checkpoints, agree, checksums
from xlit_jax.io.checkpoints.sums import first_mismatch

# random values do not compress: bytes overwritten inside their data file still read as valid arrays
PARAMS = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(32, 32)), jnp.float32), "b": jnp.ones(3, jnp.bfloat16)}
OPT = {"mu": jnp.zeros(4), "count": jnp.array(3, jnp.int32)}


def params_at(step: int) -> dict:
    return jax.tree_util.tree_map(lambda x: x + step, PARAMS)


@pytest.fixture
def checkpoints(tmp_path):
    """Steps 1 and 2 saved in tmp_path."""
    checkpoints = Checkpoints(tmp_path, async_save=False)
    for step in (1, 2):
        checkpoints.save(step, params_at(step), OPT, {"position": step})
    checkpoints.wait()
    yield checkpoints
    checkpoints.close()


def assert_same(tree, other) -> None:
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), tree, other)


def damage(how: str, checkpoints: Checkpoints, step: int) -> None:
    """Truncate the largest data file of the step's params, or overwrite 16 bytes in its middle."""
    data = max((checkpoints.directory / str(step) / "params").rglob("d/*"), key=lambda p: p.stat().st_size)
    if how == "truncate":
        os.truncate(data, 10)
    else:
        with open(data, "r+b") as f:
            f.seek(data.stat().st_size // 2)
            f.write(b"\x7f" * 16)


def steps(checkpoints: Checkpoints) -> list[int]:
    return sorted(int(p.name) for p in checkpoints.directory.iterdir() if p.name.isdigit())


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "cannot be restored" in r.getMessage()]


def test_the_newest_step_restores_bitwise_and_params_alone_restore_read_only(checkpoints, tmp_path):
    step, restored = checkpoints.restore_latest(PARAMS, OPT)
    assert step == 2 and restored["data"] == {"position": 2}
    assert_same(restored["params"], params_at(2))
    assert_same(restored["opt_state"], OPT)
    assert restored["params"]["b"].dtype == jnp.bfloat16
    reader = Checkpoints(tmp_path, read_only=True)
    first = reader.restore(1, PARAMS)
    reader.close()
    assert "opt_state" not in first and reader.mismatch(1, first) is None
    assert_same(first["params"], params_at(1))
    empty = Checkpoints(tmp_path / "empty")
    assert empty.restore_latest(PARAMS, OPT) is None
    empty.close()


def test_a_damaged_newest_step_is_set_aside_and_the_one_before_restores(checkpoints, caplog):
    damage("truncate", checkpoints, 2)
    with caplog.at_level("WARNING"):
        step, restored = checkpoints.restore_latest(PARAMS, OPT)
    assert step == 1 and restored["data"] == {"position": 1} and steps(checkpoints) == [1]
    aside = checkpoints.directory / "unreadable" / "2"
    [line] = warnings(caplog)
    assert line.startswith(f"checkpoint step 2 cannot be restored ({checkpoints.directory / '2' / 'params'}")
    assert line.endswith(f"moved to {aside}, resuming from step 1") and (aside / "params").is_dir()
    # a step damaged again is set aside beside the first, never over it
    checkpoints.save(2, params_at(2), OPT, {"position": 2})
    checkpoints.wait()
    damage("truncate", checkpoints, 2)
    assert checkpoints.restore_latest(PARAMS, OPT)[0] == 1
    assert sorted(p.name for p in aside.parent.iterdir()) == ["2", "2.1"]


def test_bytes_overwritten_inside_a_data_file_fail_the_checksum_and_are_refused(checkpoints, caplog):
    damage("overwrite", checkpoints, 2)
    restored = checkpoints.restore(2, PARAMS, OPT)  # Orbax reads the changed bytes without an error
    reason = f"{checkpoints.directory / '2' / 'params'}: ['w'] does not match its checksum"
    assert checkpoints.mismatch(2, restored).startswith(reason)
    with caplog.at_level("WARNING"):
        assert checkpoints.restore_latest(PARAMS, OPT)[0] == 1
    [line] = warnings(caplog)
    assert line.startswith(f"checkpoint step 2 cannot be restored ({reason}")
    damage("overwrite", checkpoints, 1)
    with pytest.raises(UserError, match=rf"^no checkpoint in {re.escape(str(checkpoints.directory))} can be "
                                        rf"restored \(steps 1; step 1: .*does not match its checksum"):
        checkpoints.restore_latest(PARAMS, OPT)
    assert steps(checkpoints) == [1]  # nothing is moved when nothing restores


def test_checksums_weigh_each_element_by_its_position():
    sums = checksums({"a": jnp.array([1.0, 2.0]), "b": [jnp.zeros(2, jnp.bfloat16)]})
    assert set(sums) == {"['a']", "['b'][0]"}
    assert checksums({"a": jnp.array([2.0, 1.0])})["['a']"] != sums["['a']"]  # the same values, swapped
    assert first_mismatch({"a": jnp.array([1.0, 2.0])}, sums, Path("d")) is None
    assert first_mismatch({"a": jnp.array([1.0, 3.0])}, sums, Path("d")).startswith("d: ['a'] does not match")
    assert first_mismatch({"a": jnp.array([1.0, 3.0])}, None, Path("d")) is None  # saved before checksums


def test_a_restore_is_taken_only_when_it_read_and_checked_well(tmp_path):
    def unreadable():  # the reason: the file named anywhere in the chain, the innermost error's first line
        try:
            raise OSError("short read\nof 10 bytes")
        except OSError as e:
            raise ValueError(f"cannot read {tmp_path}/params/d/abc") from e

    assert agree.restore_everywhere(lambda: 7, tmp_path) == (True, 7, None)
    assert agree.restore_everywhere(unreadable, tmp_path) == (False, None, f"{tmp_path}/params/d/abc: short read")
    assert agree.restore_everywhere(lambda: 7, tmp_path, check=lambda value: f"{value} is wrong") == (
        False, 7, "7 is wrong")
    with pytest.raises(UserError, match=r"^the LoRA base cannot be restored \(7 is wrong\)$"):
        agree.restored(lambda: 7, tmp_path, "the LoRA base", check=lambda value: f"{value} is wrong")


def test_a_restore_that_failed_on_another_process_is_refused_on_every_process(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(agree.multihost_utils, "process_allgather", lambda ok: np.array([ok, 1]))
    assert agree.everywhere(True) and not agree.everywhere(False)
    monkeypatch.setattr(agree.multihost_utils, "process_allgather", lambda ok: np.array([ok, 0]))
    checked = []
    # this process read it well, the other did not: no check (a collective the other skips), no reason here
    assert agree.restore_everywhere(lambda: 7, tmp_path, check=checked.append) == (False, None, None)
    assert not checked
    with pytest.raises(UserError, match=r"^step 2 cannot be restored \(unreadable on another process"):
        agree.restored(lambda: 7, tmp_path, "step 2")


def test_a_step_unreadable_on_another_process_is_set_aside_here_too(checkpoints, monkeypatch, caplog):
    others = iter([False, True])  # the other process fails to read step 2, then reads step 1
    monkeypatch.setattr(agree, "everywhere", lambda ok: ok and next(others))
    with caplog.at_level("WARNING"):
        assert checkpoints.restore_latest(PARAMS, OPT)[0] == 1
    assert warnings(caplog) == [f"checkpoint step 2 cannot be restored (unreadable on another process, see its "
                                f"log); moved to {checkpoints.directory / 'unreadable' / '2'}, resuming from step 1"]
