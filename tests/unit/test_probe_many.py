"""bench/probe_many.py: its summary of `ss -tmni`, read from lines in the format `ss` prints
(two sockets from a probe at 1,000 tunnels, shortened), which has to add up the queues,
drops and retransmissions and put the relay's carriers on a line of their own."""

from __future__ import annotations

from bench.probe_many import summarize_ss

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
