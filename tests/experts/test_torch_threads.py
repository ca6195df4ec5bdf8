"""experts.torch_threads: each forward pass's torch threads, from the host's other load."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from experts import Encoder
from experts.torch_threads import ThreadChoice, cpu_quota, host_busy_seconds, usable_cores


class Host:
    """Readings a test sets: the host's busy seconds, this process's CPU seconds and the clock."""

    def __init__(self) -> None:
        self.now, self.busy, self.own = 0.0, 0.0, 0.0

    def others(self, cores: float, seconds: float = 1.0, own: float = 0.0) -> None:
        """Let ``seconds`` pass in which other processes keep ``cores`` cores busy and this one ``own``."""
        self.now += seconds
        self.busy += (cores + own) * seconds
        self.own += own * seconds

    def choice(self, cores: int = 2, **kwargs) -> ThreadChoice:
        return ThreadChoice(
            host_busy=lambda: self.busy, own_cpu=lambda: self.own, clock=lambda: self.now, cores=cores, **kwargs
        )


def test_a_quiet_host_gives_a_pass_every_core_and_a_held_core_takes_one_away() -> None:
    host = Host()
    choice = host.choice(cores=2)
    host.others(0.05, own=1.0)  # this process's own work is not another's
    assert choice.threads() == 2
    host.others(1.0)
    assert choice.threads() == 1
    assert choice.others_load == pytest.approx(1.0)


def test_the_choice_moves_only_past_the_margin() -> None:
    host = Host()
    choice = host.choice(cores=2)
    host.others(0.5)
    assert choice.threads() == 2  # half a core: not yet a core held
    host.others(0.65)
    assert choice.threads() == 1
    host.others(0.45)
    assert choice.threads() == 1  # and once held, not given back until it falls under 0.4
    host.others(0.3)
    assert choice.threads() == 2


def test_readings_are_refreshed_at_most_every_interval() -> None:
    host = Host()
    choice = host.choice(cores=2, interval_s=0.5)
    host.others(1.0, seconds=0.2)
    assert choice.threads() == 2  # 0.2 s since the last reading: still the old choice
    host.others(1.0, seconds=0.4)
    assert choice.threads() == 1


def test_training_of_this_process_takes_a_core_but_never_the_last() -> None:
    host = Host()
    choice = host.choice(cores=4)
    host.others(0.0)
    assert choice.threads() == 4
    with choice.holding_a_core(), choice.holding_a_core():
        assert choice.threads() == 2
        host.others(3.0)
        assert choice.threads() == 1
    assert choice.threads() == 1  # the other processes still hold three cores
    assert host.choice(cores=4, most=2).threads() == 2


def test_a_host_whose_load_cannot_be_read_gets_one_thread() -> None:
    choice = ThreadChoice(host_busy=lambda: None, cores=2)
    assert choice.threads() == 1


def test_proc_stat_counts_the_cores_asked_for() -> None:
    everything = host_busy_seconds()
    if everything is None:
        pytest.skip("no /proc/stat here")
    first = host_busy_seconds({0})
    assert first is not None and 0 < first <= everything


@pytest.mark.skipif(usable_cores() < 2 or host_busy_seconds() is None, reason="needs two cores and /proc/stat")
def test_a_process_burning_a_core_leaves_the_pass_one_fewer_thread() -> None:
    choice = ThreadChoice(interval_s=0.0)
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        choice.threads()
        time.sleep(1.0)
        threads = choice.threads()
        assert choice.others_load >= 0.6, choice.others_load
        assert threads <= usable_cores() - 1
    finally:
        burner.kill()
        burner.wait()


def test_an_auto_encoder_sets_the_torch_threads_of_the_thread_running_the_pass(tiny_bert_path: Path) -> None:
    encoder = Encoder(tiny_bert_path, threads="auto")
    assert torch.get_num_threads() == 1  # the process-wide default: work not chosen per pass keeps one thread
    host = Host()
    encoder.thread_choice = host.choice(cores=2, interval_s=0.0)

    def threads_of_a_pass() -> int:
        seen: list[int] = []
        thread = threading.Thread(target=lambda: (encoder.embed(["a query"]), seen.append(torch.get_num_threads())))
        thread.start()
        thread.join()
        return seen[0]

    host.others(0.0)
    assert threads_of_a_pass() == 2
    host.others(1.0)
    assert threads_of_a_pass() == 1
    host.others(0.0)
    with encoder.holding_a_core():
        assert threads_of_a_pass() == 1
    assert threads_of_a_pass() == 2
    assert torch.get_num_threads() == 1  # this thread's own setting is untouched by the passes'


def test_threads_other_than_a_count_auto_or_none_are_refused(tiny_bert_path: Path) -> None:
    with pytest.raises(ValueError, match="threads must be a positive int, 'auto' or None"):
        Encoder(tiny_bert_path, threads="two")  # type: ignore[arg-type]


def test_cpu_quota_reads_cgroup_v2_and_v1(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("200000 100000\n")
    assert cpu_quota(v2) == 2.0
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(v2) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("150000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(v1) == 1.5
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota(v1) is None
    assert cpu_quota(tmp_path / "nothing") is None
    assert usable_cores(1.5) == 1 and usable_cores(0.5) == 1 and usable_cores(None) >= 1


def test_under_a_cpu_quota_passes_share_its_cores_and_the_host_is_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("experts.torch_threads.os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    reads: list[int] = []
    choice = ThreadChoice(quota=2.0, host_busy=lambda: reads.append(1) or 1e6, interval_s=0.0)
    assert choice.cores == 2 and not choice.reads_host
    assert choice.threads() == 2
    with choice.holding_a_core():
        assert choice.threads() == 1
    assert reads == []  # sixteen busy host cores are other cgroups' business
    assert ThreadChoice(quota=32.0, host_busy=lambda: 0.0).reads_host  # a quota above the cores limits nothing
