#!/bin/sh
# Network set-up of the NAT interop test (tests/interop.rs, nat_phone_registers_and_answers).
#
# Run it inside a network namespace of its own (the test calls unshare(CLONE_NEWNET) on its
# thread first): nothing here touches the host's network. PHONE_PID is a process already in a
# second, empty namespace (`unshare -n`): the phone's.
#
#   this namespace (outside)                     phone's namespace
#   lo 127.0.0.1: sipshard, the caller            priv0 192.168.77.2/32: the phone binds it
#   sipnat0 10.201.0.1/30  <----- veth ------>    sipnat1 10.201.0.2/30, route 127.0.0.1 via
#                                                 10.201.0.1 (lo stays down)
#
# The phone's namespace is its NAT router too: what leaves sipnat1 is masqueraded to 10.201.0.2
# with random source ports ("masquerade random"), and its input filter lets in only what belongs
# to flows the phone opened (ct state established,related); everything else is counted and
# dropped. The phone's Contact names 192.168.77.2: outside, 192.168.77.0/24 is routed to the NAT
# box (as on a LAN), whose filter drops anything new for it.
# route_localnet lets 127.0.0.1 cross the veth in both directions.
#
#   nat.sh setup PHONE_PID    build it
#   nat.sh show PHONE_PID     the phone side's nft ruleset (with counters), addresses and
#                             routes, for failure reports
set -eu
cmd=$1
pid=$2
in_phone() { nsenter --net="/proc/$pid/ns/net" "$@"; }

case "$cmd" in
setup)
    ip link set lo up
    ip link add sipnat0 type veth peer name sipnat1
    ip link set sipnat1 netns "$pid"
    ip addr add 10.201.0.1/30 dev sipnat0
    ip link set sipnat0 up
    # Packets for the private network go to the NAT box, as on a LAN: its filter drops them
    # (they belong to no flow the phone opened) and counts them, for the failure report.
    ip route add 192.168.77.0/24 via 10.201.0.2
    sysctl -qw net.ipv4.conf.all.route_localnet=1 net.ipv4.conf.sipnat0.route_localnet=1 \
        net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.sipnat0.rp_filter=0

    in_phone ip link set sipnat1 up
    in_phone ip addr add 10.201.0.2/30 dev sipnat1
    # The private address lives on an interface of its own (a veth pair with both ends in the
    # phone's namespace: the dummy driver may be missing).
    in_phone ip link add priv0 type veth peer name priv1
    in_phone ip addr add 192.168.77.2/32 dev priv0
    in_phone ip link set priv0 up
    in_phone ip link set priv1 up
    in_phone sysctl -qw net.ipv4.conf.all.route_localnet=1 net.ipv4.conf.sipnat1.route_localnet=1 \
        net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.sipnat1.rp_filter=0
    in_phone ip route add 127.0.0.1/32 via 10.201.0.1 dev sipnat1 src 192.168.77.2
    in_phone nft -f - <<'NFT'
table ip phone_nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "sipnat1" counter masquerade random
    }
    chain input {
        type filter hook input priority filter; policy accept;
        iifname != "sipnat1" accept
        ct state established,related counter accept
        ip daddr 192.168.77.2 counter drop comment "new flow to the private Contact address"
        ip daddr 10.201.0.2 counter drop comment "new flow to the NAT's public address"
        counter drop
    }
}
NFT
    ;;
show)
    echo "--- phone namespace: nft ruleset (counters) ---"
    in_phone nft list ruleset || true
    echo "--- phone namespace: addresses and routes ---"
    in_phone ip -brief addr || true
    in_phone ip route || true
    echo "--- outside: routes ---"
    ip route || true
    ;;
*)
    echo "usage: $0 setup|show PHONE_PID" >&2
    exit 2
    ;;
esac
