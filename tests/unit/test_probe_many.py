"""bench/probe_many.py: its summary of `ss -tmni`, read from lines in the format `ss` prints
(two sockets from a probe at 1,000 tunnels, shortened), which has to add up the queues,
drops and retransmissions and put the relay's carriers on a line of their own."""

from __future__ import annotations

from bench.probe_many import parse_perf_stat, summarize_ss, syscall_line

CARRIER = (
    "ESTAB 0       327415  127.0.0.1:35034 127.0.0.1:35427\n"
    "\t skmem:(r0,rb131072,t0,tb289113,f201,w331575,o0,bl0,d5) bbr wscale:10,10 rto:204 "
    "mss:65483 bytes_sent:454904344 bytes_retrans:23061278 bytes_acked:431580923\n"
)
TUNNEL = (
    "ESTAB 0       300032  127.0.0.2:44011 127.0.0.1:33946\n"
    "\t skmem:(r0,rb131072,t0,tb292054,f3776,w307520,o0,bl0,d0) bbr rto:220 "
    "bytes_sent:415744 bytes_retrans:93184 bytes_acked:322560\n"
)
RECEIVER = (
    "ESTAB 2621440 0       127.0.0.1:33946 127.0.0.2:44011\n"
    "\t skmem:(r2700000,rb2700000,t0,tb2626560,f0,w0,o0,bl0,d7) bbr rto:204 "
    "bytes_received:2621440\n"
)


def test_the_carriers_are_summed_apart_from_the_tunnels_sockets() -> None:
    lines = summarize_ss(CARRIER + TUNNEL + CARRIER + RECEIVER, relay_port=35427)
    carriers = next(line for line in lines if "carriers" in line)
    assert "port 35427: 2 sockets" in carriers
    assert "send queues 0.7 MB" in carriers  # 2 x 331,575
    assert "drops 10" in carriers
    assert "retransmitted 5.1% of 910 MB sent" in carriers  # 2 x 23.06 / 2 x 454.9
    tunnel = next(line for line in lines if "127.0.0.2 -> 127.0.0.1" in line)
    assert "1 sockets" in tunnel and "retransmitted 22.4% of 0 MB sent" in tunnel
    receiver = next(line for line in lines if "127.0.0.1 -> 127.0.0.2" in line)
    assert "receive queues 2.7 MB" in receiver and "drops 7" in receiver
    assert "retransmitted 0.0% of 0 MB sent" in receiver  # sent nothing: no division by 0
    assert lines[0] is receiver  # the largest queues first


def test_without_the_relay_port_every_socket_is_summed_by_address_pair() -> None:
    lines = summarize_ss(CARRIER + TUNNEL)
    assert not any("carriers" in line for line in lines)
    assert any(line.startswith("  127.0.0.1 -> 127.0.0.1: 1 sockets") for line in lines)


PERF_STAT = """# started on Mon Nov 30 17:28:26 2026

0,,syscalls:sys_enter_read,1501770522,100.00,,
7404,,syscalls:sys_enter_recvfrom,1501770522,100.00,,
2162,,syscalls:sys_enter_sendto,1501770522,100.00,,
9210,,syscalls:sys_enter_sendmsg,1501770522,100.00,,
6104,,syscalls:sys_enter_epoll_pwait,1501770522,100.00,,
<not counted>,,syscalls:sys_enter_epoll_ctl,0,0.00,,
"""


def test_perf_stat_counts_are_read_by_system_call() -> None:
    counts = parse_perf_stat(PERF_STAT)
    assert counts == {
        "read": 0,
        "recvfrom": 7404,
        "sendto": 2162,
        "sendmsg": 9210,
        "epoll_pwait": 6104,
        "epoll_ctl": 0,  # not counted: no number to read
    }


def test_syscall_line_gives_calls_per_mb_and_bytes_per_read_and_write() -> None:
    line = syscall_line("relay", parse_perf_stat(PERF_STAT), moved=740_400_000)
    # 740.4 MB: reads 7,404 (10.0 per MB, 100 KB each); writes 2,162 + 9,210 = 11,372
    assert line.startswith("  relay: reads 10.0 / MB (100.0 KB each), writes 15.4 / MB (65.1 KB ")
    assert "recvfrom 10.0, sendto 2.9, sendmsg 12.4, epoll_pwait 8.2" in line
    assert "read 0" not in line and "epoll_ctl" not in line  # calls never made are left out


def test_a_program_that_made_no_call_does_not_divide_by_zero() -> None:
    line = syscall_line("target", {}, moved=0)
    assert "reads 0.0 / MB" in line and "writes 0.0 / MB" in line
