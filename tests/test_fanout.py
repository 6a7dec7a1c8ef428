"""The sync that follows a fan-out, at the unit seam (the fan-out across real workers is tests/integration/test_fanout.py)."""

import pytest

from label_studio_ale import fanout, jobs
from label_studio_ale.runtime import Runtime
from label_studio_ale.settings import Settings


class Served:
    classes = ("bird",)

    def __init__(self, version):
        self.version = version


@pytest.mark.parametrize("served, fans_out", [("m-1", False), ("m-2", True)])
def test_the_follow_up_sync_fans_out_again_only_for_a_model_promoted_meanwhile(tmp_path, monkeypatch, served, fans_out):
    """Same model: what no chunk stored is predicted by the follow-up itself. A model promoted while the chunks ran
    (they skipped): the whole pool is new to it, and one job on one worker would predict it all."""
    rt = Runtime(Settings(model_dir=tmp_path), adapter_factory=lambda: Served(served))
    rt.raise_flag(fanout.fanout_flag(3), "follow-up", fanout.FANOUT_TTL)
    calls = []
    monkeypatch.setattr(jobs, "sync_priorities", lambda project, runtime, progress, fanout: calls.append((project, fanout)) or {})
    fanout.sync_after_prediction(3, "m-1", runtime=rt)
    assert calls == [(3, fans_out)] and not rt.flag_raised(fanout.fanout_flag(3))
    fanout.sync_after_prediction(3, runtime=rt)  # queued before the follow-up knew its model version
    assert calls[-1] == (3, False)
