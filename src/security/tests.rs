use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn guard(settings: SecuritySettings) -> (Guard, Arc<ShardStats>) {
    let stats = Arc::new(ShardStats::default());
    (
        Guard::new(Arc::new(settings), Arc::default(), stats.clone()),
        stats,
    )
}

fn flood(requests: u32) -> SecuritySettings {
    SecuritySettings {
        flood: Some(FloodLimit {
            requests,
            window_ms: 1_000,
        }),
        ban_ms: 10_000,
        ..SecuritySettings::default()
    }
}

fn dropped(stats: &ShardStats, r: DropReason) -> u64 {
    stats.dropped[r as usize].get()
}

#[test]
fn a_source_over_the_flood_limit_is_banned_until_the_ban_expires() {
    let (mut g, stats) = guard(flood(10));
    let bad = ip("127.0.0.3");
    for i in 0..10 {
        assert_eq!(g.admit(bad, 0, true, 100 + i), Admit::Pass, "request {i}");
    }
    assert_eq!(g.admit(bad, 0, true, 200), Admit::Drop);
    // Banned: everything from it is dropped, responses too, in later windows too.
    assert_eq!(g.admit(bad, 0, false, 5_000), Admit::Drop);
    assert_eq!(g.admit(bad, 0, true, 9_000), Admit::Drop);
    // Others keep flowing meanwhile.
    assert_eq!(g.admit(ip("127.0.0.2"), 0, true, 300), Admit::Pass);
    // 10 s after the ban: served again.
    assert_eq!(g.admit(bad, 0, true, 10_200), Admit::Pass);
    assert_eq!(dropped(&stats, DropReason::Banned), 3);
    assert_eq!(g.board().bans(300).len(), 1);
    assert_eq!(g.board().bans(300)[0].reason, BanReason::Flood);
}

#[test]
fn the_count_starts_over_each_window() {
    let (mut g, _) = guard(flood(10));
    let a = ip("192.0.2.1");
    for w in 0..5u64 {
        for i in 0..10 {
            assert_eq!(g.admit(a, 0, true, w * 1_000 + i), Admit::Pass);
        }
    }
}

#[test]
fn responses_are_not_counted() {
    let (mut g, _) = guard(flood(10));
    let peer = ip("192.0.2.9");
    for i in 0..100 {
        assert_eq!(g.admit(peer, 0, false, i), Admit::Pass);
    }
    assert_eq!(g.tracked_sources(), 0);
}

#[test]
fn exempt_sources_are_never_banned() {
    let (mut g, _) = guard(flood(10));
    for i in 0..1_000 {
        assert_eq!(g.admit(ip("127.0.0.1"), 0, true, i), Admit::Pass);
        assert_eq!(g.admit(ip("::1"), 0, true, i), Admit::Pass);
        // IPv4-mapped IPv6 is the IPv4 address.
        assert_eq!(g.admit(ip("::ffff:127.0.0.1"), 0, true, i), Admit::Pass);
    }
}

#[test]
fn a_ban_on_one_shard_is_obeyed_by_the_others() {
    let board: Arc<Board> = Arc::default();
    let stats = Arc::new(ShardStats::default());
    let s = Arc::new(flood(5));
    let mut a = Guard::new(s.clone(), board.clone(), stats.clone());
    let mut b = Guard::new(s, board, stats);
    let bad = ip("198.51.100.4");
    assert_eq!(b.admit(bad, 0, true, 0), Admit::Pass);
    for _ in 0..5 {
        assert_eq!(a.admit(bad, 0, true, 1), Admit::Pass);
    }
    assert_eq!(a.admit(bad, 0, true, 2), Admit::Drop);
    assert_eq!(
        b.admit(bad, 0, true, 3),
        Admit::Drop,
        "shard b learned the ban"
    );
    assert_eq!(b.admit(bad, 0, false, 4), Admit::Drop);
}

#[test]
fn acls_deny_before_allow_and_can_answer_403() {
    let mut s = SecuritySettings::off();
    s.allow = vec!["10.0.0.0/8".parse().unwrap()];
    s.deny = vec!["10.9.0.0/16".parse().unwrap()];
    let (mut g, stats) = guard(s.clone());
    assert_eq!(g.admit(ip("10.1.2.3"), 0, true, 0), Admit::Pass);
    assert_eq!(g.admit(ip("10.9.2.3"), 0, true, 0), Admit::Drop);
    assert_eq!(g.admit(ip("192.0.2.1"), 0, false, 0), Admit::Drop);
    assert_eq!(g.admit(ip("::ffff:10.1.2.3"), 0, true, 0), Admit::Pass);
    assert_eq!(dropped(&stats, DropReason::Denied), 2);
    s.deny_answer = DenyAnswer::Forbidden;
    g.reload(Arc::new(s.clone()));
    assert_eq!(g.admit(ip("10.9.2.3"), 0, true, 0), Admit::Forbid);
    // A reload that allows it again takes effect for a source already seen.
    s.deny.clear();
    g.reload(Arc::new(s));
    assert_eq!(g.admit(ip("10.9.2.3"), 0, true, 0), Admit::Pass);
}

#[test]
fn scanners_are_dropped_and_banned_unless_exempt() {
    let (mut g, stats) = guard(SecuritySettings::default());
    let scanner = ip("127.0.0.3");
    assert!(g.is_scanner(b"friendly-scanner", scanner, 0));
    assert_eq!(g.admit(scanner, 0, true, 1), Admit::Drop, "banned");
    assert!(!g.is_scanner(b"baresip v1.0.0", ip("127.0.0.4"), 0));
    assert!(g.is_scanner(b"sipvicious", ip("127.0.0.1"), 0));
    assert_eq!(g.admit(ip("127.0.0.1"), 0, true, 1), Admit::Pass, "exempt");
    assert_eq!(dropped(&stats, DropReason::Scanner), 2);
    assert_eq!(g.board().bans(1)[0].reason, BanReason::Scanner);
}

#[test]
fn the_source_table_is_bounded_and_swept() {
    let mut s = flood(1_000);
    s.max_sources = 100;
    let (mut g, _) = guard(s);
    // 1,000 sources in one window: at most 100 are tracked, all are served.
    for i in 0..1_000u32 {
        let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        assert_eq!(g.admit(a, 0, true, 0), Admit::Pass);
    }
    assert_eq!(g.tracked_sources(), 100);
    // After the window the old entries make room again.
    let late = ip("192.0.2.200");
    assert_eq!(g.admit(late, 0, true, 2_000), Admit::Pass);
    assert!(g.tracked_sources() <= 100);
    assert!(g.sources.contains_key(&key(late)));
}

#[test]
fn everything_off_tracks_nothing() {
    let (mut g, _) = guard(SecuritySettings::off());
    for i in 0..10_000 {
        assert_eq!(g.admit(ip("192.0.2.1"), 0, true, i), Admit::Pass);
    }
    assert_eq!(g.tracked_sources(), 0);
}

#[test]
fn a_listen_address_can_have_its_own_acl() {
    let mut s = SecuritySettings::off();
    s.listen_acls = vec![ListenAcl {
        socket: 1,
        allow: vec!["10.0.0.0/8".parse().unwrap()],
        deny: vec!["10.9.0.0/16".parse().unwrap()],
    }];
    let (mut g, _) = guard(s);
    // Socket 0 (the public address) serves everyone; socket 1 only 10/8 without 10.9/16.
    assert_eq!(g.admit(ip("192.0.2.1"), 0, true, 0), Admit::Pass);
    assert_eq!(g.admit(ip("192.0.2.1"), 1, true, 0), Admit::Drop);
    assert_eq!(g.admit(ip("10.1.1.1"), 1, true, 0), Admit::Pass);
    assert_eq!(g.admit(ip("10.9.1.1"), 1, true, 0), Admit::Drop);
}
