"""Files the project writes (identities, videos, checkpoints, shards) get the normal umask mode, not 0600."""
import os
import stat

import pytest
import torch

from moca_model import MoCAIdentity
from moca_model.atomic import atomic_target
from moca_model.video import write_video


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def test_written_files_follow_the_umask(tmp_path, umask_022):
    with atomic_target(tmp_path / "a.txt") as tmp:
        open(tmp, "w").write("x")
    assert _mode(tmp_path / "a.txt") == 0o644
    ident = MoCAIdentity(torch.randn(1, 512), torch.randn(1, 16, 1, 4, 4)).save(tmp_path / "id.safetensors")
    assert _mode(ident) == 0o644
    video = write_video(tmp_path / "v.mp4", torch.rand(3, 16, 16, 3), fps=4)
    assert _mode(video) == 0o644
    from moca_model.training.train_state import save_checkpoint
    ck = save_checkpoint(tmp_path / "run", 1, {"w": torch.zeros(2)}, {}, [], None, {})
    assert _mode(ck / "model.safetensors") == 0o644 and _mode(ck / "optimizer.safetensors") == 0o644
    os.umask(0o077)
    with atomic_target(tmp_path / "private.txt") as tmp:
        open(tmp, "w").write("x")
    assert _mode(tmp_path / "private.txt") == 0o600
