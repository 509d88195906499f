//! Build script: nothing is generated. It only warns, where `cargo build` / `cargo test` show it,
//! when an external program some integration tests drive is not on PATH, or io_uring is
//! disabled: those tests then skip (each prints a `SKIPPED` line when it runs), and the variable
//! named in the warning turns the skip into a failure (CI sets them, see .ci/run).

use std::path::Path;

/// (program, what uses it, how to install it, the variable that makes its absence fail).
const PROGRAMS: &[(&str, &str, &str, &str)] = &[
    (
        "sipp",
        "the SIPp tests (tests/sipp.rs)",
        "apt-get install sip-tester",
        "SIPSHARD_REQUIRE_SIPP",
    ),
    (
        "redis-server",
        "the shared-store tests (tests/sipp.rs)",
        "apt-get install redis-server",
        "SIPSHARD_REQUIRE_REDIS",
    ),
    (
        "baresip",
        "the interop tests that use it",
        "apt-get install baresip",
        "SIPSHARD_REQUIRE_INTEROP",
    ),
    (
        "linphonec",
        "the interop tests that use it",
        "apt-get install linphone-cli",
        "SIPSHARD_REQUIRE_INTEROP",
    ),
    (
        "sipsak",
        "the interop tests that use it",
        "apt-get install sipsak",
        "SIPSHARD_REQUIRE_INTEROP",
    ),
];

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            let p = dir.join(program);
            p.is_file()
                && std::fs::metadata(&p)
                    .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0)
                    .unwrap_or(false)
        })
    })
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PATH");
    let mut missing = false;
    for (program, users, install, require) in PROGRAMS {
        println!("cargo:rerun-if-env-changed={require}");
        if !on_path(program) {
            missing = true;
            println!(
                "cargo:warning={program} not found on PATH: {users} will skip ({install}; \
                 {require}=1 makes that a failure)"
            );
        }
    }
    if missing {
        // Installing the program changes its directory's mtime: watch every PATH directory so
        // the warning goes away then (cargo replays a build script's warnings until it reruns,
        // and a watched path that does not exist would rerun it, and rebuild, every time).
        if let Some(paths) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&paths) {
                if dir.is_absolute() && dir.is_dir() {
                    println!("cargo:rerun-if-changed={}", dir.display());
                }
            }
        }
    }
    // PostgreSQL's server programs are not on PATH (Debian keeps them per version).
    println!("cargo:rerun-if-env-changed=SIPSHARD_REQUIRE_POSTGRES");
    let initdb = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.path().join("bin/initdb").is_file());
    if !initdb {
        println!(
            "cargo:warning=PostgreSQL (initdb) not found under /usr/lib/postgresql: the \
             PostgreSQL CDR sink test (tests/sipp.rs) will skip (apt-get install postgresql; \
             SIPSHARD_REQUIRE_POSTGRES=1 makes that a failure)"
        );
        if Path::new("/usr/lib").is_dir() {
            println!("cargo:rerun-if-changed=/usr/lib");
        }
    }
    // 0 = enabled, 1 = root only, 2 = disabled (Linux 6.6+); absent = not restricted.
    let knob = Path::new("/proc/sys/kernel/io_uring_disabled");
    if let Ok(v) = std::fs::read_to_string(knob) {
        if v.trim() == "2" {
            println!(
                "cargo:warning=io_uring is disabled (kernel.io_uring_disabled=2): the io_uring \
                 tests will skip (SIPSHARD_REQUIRE_URING=1 makes that a failure)"
            );
        }
    }
}
