"""The training budget's clock leaves out the time the hypervisor took."""

from hhmr.training.clock import RunClock, stolen_seconds


class Fake:
    def __init__(self) -> None:
        self.wall, self.steal = 100.0, 7.0


def test_run_clock_counts_wall_time_less_steal_and_continues_a_resumed_run():
    f = Fake()
    clock = RunClock(seconds_before=60.0, wall_before=90.0, steal=lambda: f.steal,
                     wall=lambda: f.wall)
    assert clock.seconds() == 60.0 and clock.wall_seconds() == 90.0
    f.wall += 30.0  # 30 s pass, 12 of them taken by the host
    f.steal += 12.0
    assert clock.seconds() == 60.0 + 18.0
    assert clock.wall_seconds() == 90.0 + 30.0
    assert clock.minutes() == 78.0 / 60
    f.steal += 100.0  # a steal counter that jumps past the wall time never runs backwards
    assert clock.seconds() == 60.0


def test_stolen_seconds_reads_proc_stat_and_is_zero_when_unknown(tmp_path):
    import os

    stat = tmp_path / "stat"
    hz, ncpu = os.sysconf("SC_CLK_TCK"), os.cpu_count() or 1
    stat.write_text(f"cpu  10 0 5 100 0 0 0 {4 * hz * ncpu} 0 0\ncpu0 1 2 3\n")
    assert stolen_seconds(stat) == 4.0
    assert stolen_seconds(tmp_path / "missing") == 0.0
    stat.write_text("garbage\n")
    assert stolen_seconds(stat) == 0.0
    assert stolen_seconds() >= 0.0  # this machine's own counter
